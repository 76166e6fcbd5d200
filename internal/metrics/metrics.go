// Package metrics owns twilld's Prometheus endpoint. Datapath and lease
// figures are read from the daemon's own counters at scrape time (nothing is
// added to the packet path); plugin API requests and etcd errors are
// observed as they happen.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/names"
)

// Sources are read at every scrape. Any may be nil.
type Sources struct {
	Peers       func() control.Peers
	Leases      func() []control.Lease // this host's own leases (Self) and the others'
	Allocations func() map[string]int  // network ID -> addresses allocated
	// Names gives the resolvers' counters and the records per overlay.
	Names func() (names.Snapshot, map[string]int)
	Now   func() time.Time
}

// Metrics is the registry plus the observers the daemon calls.
type Metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	etcdErrors *prometheus.CounterVec
}

// New registers twill's metrics (and the Go runtime's) on a fresh registry.
func New(src Sources) *Metrics {
	if src.Now == nil {
		src.Now = time.Now
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twill_plugin_requests_total",
			Help: "Docker plugin API requests by method and result (ok, error).",
		}, []string{"method", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "twill_plugin_request_duration_seconds",
			Help:    "Docker plugin API request latency by method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method"}),
		etcdErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twill_etcd_errors_total",
			Help: "Failed etcd operations by operation.",
		}, []string{"op"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.etcdErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&scrape{src: src})
	if src.Names != nil {
		m.reg.MustRegister(dnsCollector{read: src.Names})
	}
	return m
}

// ObserveRequest records one plugin API request.
func (m *Metrics) ObserveRequest(method string, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.requests.WithLabelValues(method, result).Inc()
	m.latency.WithLabelValues(method).Observe(d.Seconds())
}

// EtcdError counts one failed etcd operation.
func (m *Metrics) EtcdError(op string) { m.etcdErrors.WithLabelValues(op).Inc() }

// Handler serves the registry in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Serve listens on addr and serves /metrics until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listener %s (TWILL_METRICS_ADDR): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}

var (
	descPackets = prometheus.NewDesc("twill_peer_packets_total", "Packets exchanged with a peer host through the tunnel.", []string{"peer", "subnet", "direction"}, nil)
	descBytes   = prometheus.NewDesc("twill_peer_bytes_total", "Bytes (inner IP packets) exchanged with a peer host through the tunnel.", []string{"peer", "subnet", "direction"}, nil)
	descDrops   = prometheus.NewDesc("twill_datapath_drops_total", "Packets dropped by the datapath, by reason.", []string{"reason"}, nil)
	descPeers   = prometheus.NewDesc("twill_peers", "Peer hosts in the forwarding table.", nil, nil)
	descLeases  = prometheus.NewDesc("twill_leases", "Subnet leases seen in etcd, by overlay.", []string{"network"}, nil)
	descExpiry  = prometheus.NewDesc("twill_lease_expiry_seconds", "Seconds until this host's lease expires, by overlay.", []string{"network", "subnet"}, nil)
	descAllocs  = prometheus.NewDesc("twill_ipam_allocations", "Addresses allocated on this host, by Docker network.", []string{"network"}, nil)
)

// scrape turns the daemon's counters into metrics at collection time.
type scrape struct{ src Sources }

func (s *scrape) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descDrops, descPeers, descLeases, descExpiry, descAllocs} {
		ch <- d
	}
}

func (s *scrape) Collect(ch chan<- prometheus.Metric) {
	if s.src.Peers != nil {
		p := s.src.Peers()
		ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(len(p.Peers)))
		for _, x := range p.Peers {
			ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(x.PacketsIn), x.Addr, x.Subnet, "in")
			ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(x.PacketsOut), x.Addr, x.Subnet, "out")
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(x.BytesIn), x.Addr, x.Subnet, "in")
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(x.BytesOut), x.Addr, x.Subnet, "out")
		}
		for reason, n := range p.Drops {
			ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(n), reason)
		}
	}
	if s.src.Leases != nil {
		count := map[string]int{}
		for _, l := range s.src.Leases() {
			count[l.Network]++
			if l.Self && !l.Expiry.IsZero() {
				ch <- prometheus.MustNewConstMetric(descExpiry, prometheus.GaugeValue, l.Expiry.Sub(s.src.Now()).Seconds(), l.Network, l.Subnet)
			}
		}
		for n, c := range count {
			ch <- prometheus.MustNewConstMetric(descLeases, prometheus.GaugeValue, float64(c), n)
		}
	}
	if s.src.Allocations != nil {
		for n, c := range s.src.Allocations() {
			ch <- prometheus.MustNewConstMetric(descAllocs, prometheus.GaugeValue, float64(c), n)
		}
	}
}
