// Package control owns twilld's control socket: a root-only Unix socket that
// serves twillctl a JSON view of the daemon (status, leases, peers, networks,
// endpoints, names) and takes the one command that changes state, leave.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Status is this host's summary.
type Status struct {
	Hostname     string         `json:"hostname"`
	PublicIP     string         `json:"public_ip"`
	Port         int            `json:"port"`
	Underlay     string         `json:"underlay"`
	MTU          int            `json:"mtu"`
	Datapath     string         `json:"datapath"` // "kernel (…)" or "tun (why)"
	Offload      string         `json:"offload"`
	BusyPoll     string         `json:"busy_poll"` // "off", or the window and the spells so far
	Etcd         string         `json:"etcd"`
	EtcdHealthy  bool           `json:"etcd_healthy"`
	EtcdError    string         `json:"etcd_error,omitempty"`
	StartedAt    time.Time      `json:"started_at"`
	UptimeSecond float64        `json:"uptime_seconds"`
	Overlays     []OverlayLease `json:"overlays"`
}

// OverlayLease is this host's lease in one overlay.
type OverlayLease struct {
	Network string    `json:"network"`
	Subnet  string    `json:"subnet"`
	Expiry  time.Time `json:"expiry"`
	Default bool      `json:"default"`
	// Encrypted overlays name their WireGuard device, listen port and this
	// host's public key.
	Encrypted string `json:"encrypted,omitempty"`
	// Resolver is the overlay's resolver address (what users give dns: or
	// --dns); ResolverState says whether it serves, or why not.
	Resolver      string `json:"resolver,omitempty"`
	ResolverState string `json:"resolver_state,omitempty"`
}

// Name is one name a container answers to on one twill network.
type Name struct {
	Name      string `json:"name"`
	Address   string `json:"address"`
	Host      string `json:"host"` // public IP of the host that published it
	Network   string `json:"network"`
	Overlay   string `json:"overlay"`
	Container string `json:"container"`
}

// Lease is one host's lease as etcd holds it.
type Lease struct {
	Network     string    `json:"network"`
	Subnet      string    `json:"subnet"`
	PublicIP    string    `json:"public_ip"`
	BackendType string    `json:"backend_type"`
	Expiry      time.Time `json:"expiry"`
	Self        bool      `json:"self"`
	Flanneld    bool      `json:"flanneld"`
}

// Peer is one remote host's traffic counters.
type Peer struct {
	Subnet     string    `json:"subnet"`
	Addr       string    `json:"addr"`
	PacketsIn  uint64    `json:"packets_in"`
	PacketsOut uint64    `json:"packets_out"`
	BytesIn    uint64    `json:"bytes_in"`
	BytesOut   uint64    `json:"bytes_out"`
	LastSeen   time.Time `json:"last_seen,omitzero"`
	// Encrypted peers (a WireGuard overlay's) have a public key and a last
	// handshake; WireGuard counts bytes, not packets.
	Encrypted     bool      `json:"encrypted,omitempty"`
	PublicKey     string    `json:"public_key,omitempty"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
}

// Peers is the peer table plus the datapath's drop counters by reason.
type Peers struct {
	Peers []Peer            `json:"peers"`
	Drops map[string]uint64 `json:"drops"`
}

// Network is one Docker network on this host.
type Network struct {
	ID        string `json:"id"`
	Bridge    string `json:"bridge"`
	Overlay   string `json:"overlay"`
	Subnet    string `json:"subnet"`
	Gateway   string `json:"gateway"`
	Internal  bool   `json:"internal"`
	MTU       int    `json:"mtu"`
	Endpoints int    `json:"endpoints"`
}

// Endpoint is one container interface on this host.
type Endpoint struct {
	ID      string `json:"id"`
	Network string `json:"network"`
	Address string `json:"address"`
	MAC     string `json:"mac"`
	Veth    string `json:"veth"`
	// Ports are the published ports as Docker writes them, e.g.
	// "0.0.0.0:8080->80/tcp". Docker 20.10 shows none for a remote driver's
	// containers (docker port and docker ps stay empty), so this is where
	// they can be seen.
	Ports []string `json:"ports"`
}

// Source is what the daemon exposes; cmd/twilld implements it.
type Source interface {
	Status(ctx context.Context) (Status, error)
	Leases(ctx context.Context) ([]Lease, error)
	Peers(ctx context.Context) (Peers, error)
	Networks(ctx context.Context) ([]Network, error)
	Endpoints(ctx context.Context) ([]Endpoint, error)
	// Names lists the name records of every host in the overlays this
	// host uses.
	Names(ctx context.Context) ([]Name, error)
	// Leave gives this host's leases back (decommissioning).
	Leave(ctx context.Context) error
}

// Handler serves src over HTTP: GET /status, /leases, /peers, /networks,
// /endpoints, /names and POST /leave. Errors answer {"error": "..."} with status 500.
func Handler(src Source, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	get := func(path string, f func(ctx context.Context) (any, error)) {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			v, err := f(r.Context())
			reply(w, v, err, log, path)
		})
	}
	get("/status", func(ctx context.Context) (any, error) { return src.Status(ctx) })
	get("/leases", func(ctx context.Context) (any, error) { return src.Leases(ctx) })
	get("/peers", func(ctx context.Context) (any, error) { return src.Peers(ctx) })
	get("/networks", func(ctx context.Context) (any, error) { return src.Networks(ctx) })
	get("/endpoints", func(ctx context.Context) (any, error) { return src.Endpoints(ctx) })
	get("/names", func(ctx context.Context) (any, error) { return src.Names(ctx) })
	mux.HandleFunc("POST /leave", func(w http.ResponseWriter, r *http.Request) {
		err := src.Leave(r.Context())
		reply(w, map[string]string{"result": "left"}, err, log, "/leave")
	})
	return mux
}

func reply(w http.ResponseWriter, v any, err error, log *slog.Logger, path string) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		log.Warn("control request failed", "path", path, "err", err)
		w.WriteHeader(http.StatusInternalServerError)
		json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	json.NewEncoder(w).Encode(v)
}

// Listen creates the root-only socket at path (mode 0600), replacing a stale one.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory %s: %w", filepath.Dir(path), err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale control socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return ln, nil
}
