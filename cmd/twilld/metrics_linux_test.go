package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/twill-net/twill/internal/testbed"
)

// scrape reads h's /metrics from inside its namespace and returns the value
// of every sample whose labels include want, summed, per metric name.
func scrape(t *testing.T, h *host, name string, want map[string]string) float64 {
	t.Helper()
	out := testbed.MustIn(t, h.ns, "busybox", "wget", "-qO-", "http://127.0.0.1:9586/metrics")
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(out))
	if err != nil {
		t.Fatalf("metrics of h%d do not parse: %v", h.n, err)
	}
	var sum float64
	f, ok := fams[name]
	if !ok {
		return 0
	}
next:
	for _, m := range f.Metric {
		for k, v := range want {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

func TestMetricsCountTraffic(t *testing.T) {
	c := newCluster(t, "twk8")
	h1 := c.start(1, "--metrics-addr", "127.0.0.1:9586")
	h2 := c.start(2, "--metrics-addr", "127.0.0.1:9586")
	h1.net = h1.docker.CreateNetwork(t, testbed.ID("m-h1"), "10.96.0.0/16", nil)
	h2.net = h2.docker.CreateNetwork(t, testbed.ID("m-h2"), "10.96.0.0/16", nil)
	reqBefore := scrape(t, h1, "twill_plugin_requests_total", map[string]string{"method": "IpamDriver.RequestAddress"})
	c1, c2 := c.container(h1, "c1"), c.container(h2, "c2")
	mustPing(t, c1.NS, c2.Addr.Addr())
	if got := scrape(t, h1, "twill_plugin_requests_total", map[string]string{"method": "IpamDriver.RequestAddress"}) - reqBefore; got != 1 {
		t.Errorf("RequestAddress count moved by %v, want 1", got)
	}
	sub1, sub2 := c.status(h1).Overlays[0].Subnet, c.status(h2).Overlays[0].Subnet
	if v := scrape(t, h1, "twill_peers", nil); v != 1 {
		t.Errorf("twill_peers on h1 = %v, want 1", v)
	}
	if v := scrape(t, h1, "twill_lease_expiry_seconds", map[string]string{"subnet": sub1}); v < 23*3600 || v > 24*3600 {
		t.Errorf("lease expiry %v s, want about 24 h", v)
	}

	out := map[string]string{"subnet": sub2, "direction": "out"}
	in := map[string]string{"subnet": sub1, "direction": "in"}
	pktOut, byteOut := scrape(t, h1, "twill_peer_packets_total", out), scrape(t, h1, "twill_peer_bytes_total", out)
	pktIn, byteIn := scrape(t, h2, "twill_peer_packets_total", in), scrape(t, h2, "twill_peer_bytes_total", in)
	const n, payload = 1000, 100
	testbed.MustIn(t, c1.NS, "env", "TWILL_TEST_ROLE=udpsend", os.Args[0], c2.Addr.Addr().String()+":9", fmt.Sprint(n), fmt.Sprint(payload), "0")
	wire := float64(n * (payload + 28)) // inner IPv4 + UDP headers
	// The last datagrams may still be in flight when the sender exits.
	testbed.WaitFor(context.Background(), 2*time.Second, func() error {
		if got := scrape(t, h2, "twill_peer_packets_total", in) - pktIn; got < n {
			return fmt.Errorf("%v packets in so far", got)
		}
		return nil
	})
	if got := scrape(t, h1, "twill_peer_packets_total", out) - pktOut; got != n {
		t.Errorf("h1 packets out to h2 moved by %v, want %d", got, n)
	}
	if got := scrape(t, h1, "twill_peer_bytes_total", out) - byteOut; got != wire {
		t.Errorf("h1 bytes out to h2 moved by %v, want %v", got, wire)
	}
	if got := scrape(t, h2, "twill_peer_packets_total", in) - pktIn; got != n {
		t.Errorf("h2 packets in from h1 moved by %v, want %d", got, n)
	}
	if got := scrape(t, h2, "twill_peer_bytes_total", in) - byteIn; got != wire {
		t.Errorf("h2 bytes in from h1 moved by %v, want %v", got, wire)
	}
	// Forged datagrams are counted by reason.
	dropsBefore := scrape(t, h1, "twill_datapath_drops_total", map[string]string{"reason": "spoofed_source"})
	testbed.MustIn(t, h2.ns, "env", "TWILL_TEST_ROLE=forge", os.Args[0], c.bed.Addr(1).String()+":8285", "10.96.250.9", c1.Addr.Addr().String(), "9", "25")
	testbed.WaitFor(context.Background(), 2*time.Second, func() error {
		if got := scrape(t, h1, "twill_datapath_drops_total", map[string]string{"reason": "spoofed_source"}) - dropsBefore; got < 25 {
			return fmt.Errorf("%v drops so far", got)
		}
		return nil
	})
	if got := scrape(t, h1, "twill_datapath_drops_total", map[string]string{"reason": "spoofed_source"}) - dropsBefore; got != 25 {
		t.Errorf("spoofed_source drops moved by %v, want 25", got)
	}
	if v := scrape(t, h1, "twill_ipam_allocations", nil); v < 1 {
		t.Errorf("twill_ipam_allocations = %v", v)
	}
}
