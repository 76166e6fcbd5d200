package metrics

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/twill-net/twill/names"
)

func TestScrapeReportsResolvers(t *testing.T) {
	snap := names.Snapshot{
		Queries:        map[string]uint64{"local": 7, "forwarded": 3, "dropped": 1},
		ForwardCounts:  make([]uint64, len(names.ForwardBuckets)+1),
		ForwardSeconds: 0.006,
	}
	snap.ForwardCounts[1] = 2 // two forwards at <= 1 ms
	snap.ForwardCounts[3] = 1 // one at <= 5 ms
	m := New(Sources{Names: func() (names.Snapshot, map[string]int) { return snap, map[string]int{"10.96.0.0/16": 12} }})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`twill_dns_queries_total{result="local"} 7`,
		`twill_dns_queries_total{result="dropped"} 1`,
		`twill_dns_forward_duration_seconds_bucket{le="0.001"} 2`,
		`twill_dns_forward_duration_seconds_bucket{le="0.005"} 3`,
		`twill_dns_forward_duration_seconds_count 3`,
		`twill_dns_records{overlay="10.96.0.0/16"} 12`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}
