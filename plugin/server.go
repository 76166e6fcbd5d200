// Package plugin owns twill's plugin socket: one HTTP server on one Unix
// socket answering Docker's Plugin.Activate, NetworkDriver.* and
// IpamDriver.* calls with go-plugins-helpers' request and response types,
// under one mux of its own (a managed plugin has one socket for both APIs).
//
// Starting: Docker waits about 12 s for a plugin's socket at daemon start
// and calls the capability methods right away, so cmd listens and serves
// before anything slow (etcd, TUN, state). The capability calls are
// answered from constants at once. Every other call waits up to
// Options.StartWait for Ready (or Fail), then answers "twill is starting"
// so that Docker shows a reason rather than a timeout.
//
// Errors: a failed call is logged once here and answered with HTTP 500 and
// {"Err":"twill: <message>"} (no second prefix when the message already
// starts with "twill"); Docker shows "<Method>: twill: <message>".
// Malformed JSON is a 400, a body over 1 MiB a 413, an unknown method a
// 404, all with the same {"Err": ...} shape.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ContentType is what Docker's plugin client sends as Accept; answers carry it.
const ContentType = "application/vnd.docker.plugins.v1.2+json"

// MaxBodyBytes bounds a request body. Docker's largest requests (a
// CreateEndpoint with many published ports) are a few KiB.
const MaxBodyBytes = 1 << 20

// Conditions the server answers on its own.
var (
	ErrStarting    = errors.New("twill is starting")
	ErrBadRequest  = errors.New("malformed request")
	ErrTooLarge    = errors.New("request body too large")
	ErrUnknownCall = errors.New("unknown plugin method")
	ErrSocketInUse = errors.New("plugin socket is served by a running process")
)

// Options configure a Server.
type Options struct {
	Log *slog.Logger
	// Observer, when set, is called after every request with the method
	// ("NetworkDriver.Join"), its duration and its error (nil on success),
	// e.g. to feed Prometheus. It must be fast and safe for concurrent use.
	Observer func(method string, d time.Duration, err error)
	// StartWait is how long a call waits for Ready before answering
	// ErrStarting. Zero means 10 s, below Docker's own timeouts.
	StartWait time.Duration
}

// Server answers Docker's plugin calls. It is an http.Handler.
type Server struct {
	log       *slog.Logger
	observer  func(string, time.Duration, error)
	startWait time.Duration

	readyOnce sync.Once
	ready     chan struct{} // closed by Ready or Fail
	stopOnce  sync.Once
	stopping  chan struct{} // closed when Serve begins to shut down

	mu       sync.Mutex // guards the fields below
	net      NetworkDriver
	ipam     IPAMDriver
	startErr error
	waitErr  error // why the backends are not ready yet (set by Waiting)
}

// New returns a Server whose backends are not ready yet.
func New(opts Options) *Server {
	s := &Server{
		log:       opts.Log,
		observer:  opts.Observer,
		startWait: opts.StartWait,
		ready:     make(chan struct{}),
		stopping:  make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.startWait <= 0 {
		s.startWait = 10 * time.Second
	}
	return s
}

// Ready hands the server its backends; waiting and later calls use them.
// Only the first Ready or Fail counts.
func (s *Server) Ready(nd NetworkDriver, id IPAMDriver) {
	s.readyOnce.Do(func() {
		s.mu.Lock()
		s.net, s.ipam = nd, id
		s.mu.Unlock()
		close(s.ready)
	})
}

// Fail makes every call that needs a backend answer err: twilld could not
// start (state locked, etcd unreachable ...) and says why in Docker's output.
func (s *Server) Fail(err error) {
	s.readyOnce.Do(func() {
		s.mu.Lock()
		s.startErr = err
		s.mu.Unlock()
		close(s.ready)
	})
}

// Waiting records why start-up has not finished yet (etcd unreachable and
// being retried, say); a call that gives up waiting answers with it, so the
// user reads the reason rather than only "starting". nil clears it.
func (s *Server) Waiting(err error) {
	s.mu.Lock()
	s.waitErr = err
	s.mu.Unlock()
}

// backends waits for Ready or Fail, at most StartWait.
func (s *Server) backends(ctx context.Context) (NetworkDriver, IPAMDriver, error) {
	select {
	case <-s.ready:
	default:
		t := time.NewTimer(s.startWait)
		defer t.Stop()
		select {
		case <-s.ready:
		case <-t.C:
			s.mu.Lock()
			why := s.waitErr
			s.mu.Unlock()
			if why != nil {
				return nil, nil, fmt.Errorf("%w, still retrying: %w", ErrStarting, why)
			}
			return nil, nil, fmt.Errorf("%w (waiting for its state and etcd): try again in a few seconds", ErrStarting)
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("%w: %w", ErrStarting, ctx.Err())
		case <-s.stopping:
			return nil, nil, fmt.Errorf("%w: twilld is stopping before it finished starting", ErrStarting)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.startErr != nil {
		return nil, nil, fmt.Errorf("twill could not start: %w; see the plugin's log", s.startErr)
	}
	return s.net, s.ipam, nil
}

// Listen creates the plugin socket at path with mode 0600, replacing a
// stale socket file a killed process left. It refuses when a live process
// still answers on path.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating plugin socket directory %s: %w", filepath.Dir(path), err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("listening on %s: %w: stop the other twilld first", path, ErrSocketInUse)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("removing stale plugin socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting plugin socket %s to 0600: %w", path, err)
	}
	return l, nil
}

// Serve answers requests on l until ctx is done, then shuts down, letting
// calls in flight finish for up to 5 s. It closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving plugin socket %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	// Calls still waiting for the backends give up now; calls being
	// answered finish.
	s.stopOnce.Do(func() { close(s.stopping) })
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	if err != nil {
		return fmt.Errorf("shutting down plugin socket %s: %w", l.Addr(), err)
	}
	return nil
}
