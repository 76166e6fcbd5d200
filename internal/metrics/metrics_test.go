package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/twill-net/twill/internal/control"
)

func TestScrapeReportsCountersAndObservations(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	m := New(Sources{
		Peers: func() control.Peers {
			return control.Peers{
				Peers: []control.Peer{{Subnet: "10.96.2.0/24", Addr: "10.199.0.2:8285", PacketsIn: 5, PacketsOut: 7, BytesIn: 500, BytesOut: 700}},
				Drops: map[string]uint64{"unknown_peer": 3, "spoofed_source": 1},
			}
		},
		Leases: func() []control.Lease {
			return []control.Lease{
				{Network: "10.96.0.0/16", Subnet: "10.96.1.0/24", Self: true, Expiry: now.Add(90 * time.Second)},
				{Network: "10.96.0.0/16", Subnet: "10.96.2.0/24"},
			}
		},
		Allocations: func() map[string]int { return map[string]int{"abc": 4} },
		Now:         func() time.Time { return now },
	})
	m.ObserveRequest("IpamDriver.RequestAddress", 2*time.Millisecond, nil)
	m.ObserveRequest("IpamDriver.RequestAddress", 3*time.Millisecond, errors.New("full"))
	m.EtcdError("renew")

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("metrics do not parse: %v\n%s", err, body)
	}
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		f, ok := fams[name]
		if !ok {
			t.Fatalf("no metric %s", name)
		}
	next:
		for _, mm := range f.Metric {
			for _, l := range mm.Label {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue next
				}
			}
			switch {
			case mm.Counter != nil:
				return mm.Counter.GetValue()
			case mm.Gauge != nil:
				return mm.Gauge.GetValue()
			case mm.Histogram != nil:
				return float64(mm.Histogram.GetSampleCount())
			}
		}
		t.Fatalf("no %s with %v", name, labels)
		return 0
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"twill_peer_packets_total", map[string]string{"direction": "in"}, 5},
		{"twill_peer_bytes_total", map[string]string{"direction": "out"}, 700},
		{"twill_datapath_drops_total", map[string]string{"reason": "unknown_peer"}, 3},
		{"twill_peers", nil, 1},
		{"twill_leases", map[string]string{"network": "10.96.0.0/16"}, 2},
		{"twill_lease_expiry_seconds", map[string]string{"subnet": "10.96.1.0/24"}, 90},
		{"twill_ipam_allocations", map[string]string{"network": "abc"}, 4},
		{"twill_plugin_requests_total", map[string]string{"result": "error"}, 1},
		{"twill_plugin_request_duration_seconds", map[string]string{"method": "IpamDriver.RequestAddress"}, 2},
		{"twill_etcd_errors_total", map[string]string{"op": "renew"}, 1},
	}
	for _, c := range checks {
		if got := value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
