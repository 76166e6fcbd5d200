// Package etcdserver owns the embedded single-node etcd that twilld starts in
// its state directory when no external etcd is configured (ETCD_ENDPOINTS
// empty). It listens on loopback only: one host works with zero configuration,
// several hosts need a real etcd.
package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Default addresses of the embedded etcd: the well-known etcd ports, on
// loopback only.
var (
	DefaultClientAddr = netip.MustParseAddrPort("127.0.0.1:2379")
	DefaultPeerAddr   = netip.MustParseAddrPort("127.0.0.1:2380")
)

// ErrNotLoopback is returned when an address outside loopback is asked for:
// the embedded etcd is a single-host convenience and never listens on the
// network.
var ErrNotLoopback = errors.New("embedded etcd listens on loopback only")

// startTimeout bounds how long Start waits for the server to become ready when
// ctx has no earlier deadline.
const startTimeout = 30 * time.Second

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	log       *slog.Logger
	endpoints []string
	peerAddr  netip.AddrPort
	logs      *zapBridge

	closeOnce sync.Once
}

type options struct {
	clientAddr netip.AddrPort
	peerAddr   netip.AddrPort
	noFsync    bool
}

// Option changes how Start runs the server.
type Option func(*options)

// WithClientAddr sets the address clients connect to. It must be a loopback
// address; port 0 picks a free port (what tests use). Default 127.0.0.1:2379.
func WithClientAddr(a netip.AddrPort) Option { return func(o *options) { o.clientAddr = a } }

// WithPeerAddr sets the raft peer address (unused by a single node but etcd
// needs one). It must be a loopback address; port 0 picks a free port.
// Default 127.0.0.1:2380.
func WithPeerAddr(a netip.AddrPort) Option { return func(o *options) { o.peerAddr = a } }

// WithoutFsync turns off fsync in etcd's WAL and database. Only for tests: a
// crash of the machine can lose the last writes.
func WithoutFsync() Option { return func(o *options) { o.noFsync = true } }

// Start runs a single-node etcd with its data in dir (created 0700 if
// missing; a restart on the same dir keeps every key) and waits until it
// serves clients, bounded by ctx and 30 s. log receives etcd's own warnings
// and errors; etcd's info chatter is dropped.
func Start(ctx context.Context, dir string, log *slog.Logger, opts ...Option) (*Server, error) {
	o := options{clientAddr: DefaultClientAddr, peerAddr: DefaultPeerAddr}
	for _, opt := range opts {
		opt(&o)
	}
	for _, a := range []netip.AddrPort{o.clientAddr, o.peerAddr} {
		if !a.Addr().IsLoopback() {
			return nil, fmt.Errorf("embedded etcd address %s: %w", a, ErrNotLoopback)
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating etcd data dir %s: %w", dir, err)
	}

	cfg := embed.NewConfig()
	cfg.Name = "twill"
	cfg.Dir = filepath.Join(dir, "etcd")
	cu := url.URL{Scheme: "http", Host: o.clientAddr.String()}
	pu := url.URL{Scheme: "http", Host: o.peerAddr.String()}
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Leases renew once a day; keep an hour of history for watchers that
	// reconnect, and let the space be reclaimed after that.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "1h"
	cfg.UnsafeNoFsync = o.noFsync
	logs := newZapBridge(log)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(logs.logger())

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting embedded etcd in %s on %s: %w", cfg.Dir, o.clientAddr, err)
	}
	s := &Server{etcd: e, log: log, logs: logs}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		s.Close()
		return nil, fmt.Errorf("embedded etcd in %s stopped while starting: %w", cfg.Dir, err)
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("waiting for embedded etcd in %s to become ready: %w", cfg.Dir, ctx.Err())
	}

	for _, l := range e.Clients {
		s.endpoints = append(s.endpoints, "http://"+l.Addr().String())
	}
	if len(e.Peers) > 0 {
		if ap, err := netip.ParseAddrPort(e.Peers[0].Addr().String()); err == nil {
			s.peerAddr = ap
		}
	}
	log.Info("embedded etcd ready", "endpoints", s.endpoints, "dir", cfg.Dir)
	return s, nil
}

// Endpoints returns the client URLs, e.g. ["http://127.0.0.1:2379"], with the
// port actually bound when port 0 was asked for.
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// ClientAddr returns the bound client address, to restart a server on the
// same port.
func (s *Server) ClientAddr() netip.AddrPort {
	if len(s.etcd.Clients) == 0 {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(s.etcd.Clients[0].Addr().String())
	return ap
}

// PeerAddr returns the bound peer address.
func (s *Server) PeerAddr() netip.AddrPort { return s.peerAddr }

// Close stops the server and waits for it. Calling it again does nothing.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		// etcd logs errors while it tears down its own connections; they say
		// nothing about a problem once we asked it to stop.
		s.logs.setClosing()
		s.etcd.Close()
		<-s.etcd.Server.StopNotify()
		s.log.Info("embedded etcd stopped")
	})
	return nil
}

// FreeLoopback asks for a free port on 127.0.0.1 (for tests and for running
// several embedded servers on one host).
var FreeLoopback = netip.MustParseAddrPort("127.0.0.1:0")
