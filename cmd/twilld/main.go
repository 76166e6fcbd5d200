// Command twilld is twill's daemon: the Docker network and IPAM plugin, the
// subnet lease holder and the overlay datapath of one host.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/internal/metrics"
	"github.com/twill-net/twill/names"
	"github.com/twill-net/twill/plugin"
)

func main() {
	os.Exit(daemon(os.Args[1:]))
}

// daemon runs twilld with args and returns the process exit code.
func daemon(args []string) int {
	cfg, err := parseConfig(args, os.LookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "twilld: %v\n", err)
		return 2
	}
	log := newLogger(cfg, os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("twilld stopped", "err", err)
		return 1
	}
	log.Info("twilld stopped")
	return 0
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	format := cfg.LogFormat
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// run serves the plugin socket at once (Docker gives a plugin about 12 s),
// then brings up everything slow behind it, retrying what depends on etcd,
// and serves until ctx ends.
func run(ctx context.Context, cfg config, log *slog.Logger) error {
	// Metrics read the node's counters at scrape time, once it is up.
	var up atomic.Pointer[node]
	m := metrics.New(metrics.Sources{
		Peers: func() control.Peers {
			if n := up.Load(); n != nil {
				return n.peerViews()
			}
			return control.Peers{}
		},
		Leases: func() []control.Lease {
			if n := up.Load(); n != nil {
				return n.leaseViews(nil)
			}
			return nil
		},
		Allocations: func() map[string]int {
			if n := up.Load(); n != nil {
				return n.allocations()
			}
			return nil
		},
		Names: func() (names.Snapshot, map[string]int) {
			if n := up.Load(); n != nil {
				return n.dnsStats()
			}
			return names.Snapshot{}, nil
		},
	})
	srv := plugin.New(plugin.Options{Log: log, Observer: m.ObserveRequest})
	sock := filepath.Join(cfg.PluginDir, "twill.sock")
	ln, err := plugin.Listen(sock)
	if err != nil {
		return err
	}
	log.Info("plugin socket listening", "socket", sock)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()

	h, err := startHost(ctx, cfg, log, srv, m)
	if err != nil {
		if ctx.Err() != nil {
			return <-served
		}
		// Keep answering, with the reason: Docker shows it to whoever runs
		// `docker network create` or `docker run`, and restarting would only
		// repeat the same failure.
		srv.Fail(err)
		log.Error("twilld cannot start; plugin calls answer this error until it is fixed and twilld restarted", "err", err)
		<-ctx.Done()
		return <-served
	}
	up.Store(h)
	err = h.serve(ctx)
	if serr := <-served; err == nil {
		err = serr
	}
	return err
}

// retry runs f until it succeeds, ctx ends, or it returns an error for which
// fatal is true; between tries it tells the plugin server why it waits.
func retry(ctx context.Context, log *slog.Logger, srv *plugin.Server, what string, fatal func(error) bool, f func() error) error {
	delay := time.Second
	for {
		err := f()
		if err == nil {
			srv.Waiting(nil)
			return nil
		}
		if fatal(err) || ctx.Err() != nil {
			return err
		}
		srv.Waiting(err)
		log.Error(what+" failed; retrying", "err", err, "retry_in", delay.String())
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}
