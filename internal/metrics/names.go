package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twill-net/twill/names"
)

var (
	descDNSQueries = prometheus.NewDesc("twill_dns_queries_total", "Queries to the names resolvers by result: local (twill addresses), empty (twill name, other type), forwarded, forward_failed (SERVFAIL), malformed, dropped (not from the overlay or the host).", []string{"result"}, nil)
	descDNSForward = prometheus.NewDesc("twill_dns_forward_duration_seconds", "Latency of queries forwarded to the upstream resolvers.", nil, nil)
	descDNSRecords = prometheus.NewDesc("twill_dns_records", "Name records (container endpoints, every host's) by overlay.", []string{"overlay"}, nil)
)

// dnsCollector reads the resolvers' counters at scrape time.
type dnsCollector struct {
	read func() (names.Snapshot, map[string]int)
}

func (c dnsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDNSQueries
	ch <- descDNSForward
	ch <- descDNSRecords
}

func (c dnsCollector) Collect(ch chan<- prometheus.Metric) {
	s, records := c.read()
	for result, n := range s.Queries {
		ch <- prometheus.MustNewConstMetric(descDNSQueries, prometheus.CounterValue, float64(n), result)
	}
	if len(s.ForwardCounts) == len(names.ForwardBuckets)+1 {
		buckets := make(map[float64]uint64, len(names.ForwardBuckets))
		var cum uint64
		for i, le := range names.ForwardBuckets {
			cum += s.ForwardCounts[i]
			buckets[le] = cum
		}
		cum += s.ForwardCounts[len(names.ForwardBuckets)]
		ch <- prometheus.MustNewConstHistogram(descDNSForward, cum, s.ForwardSeconds, buckets)
	}
	for ov, n := range records {
		ch <- prometheus.MustNewConstMetric(descDNSRecords, prometheus.GaugeValue, float64(n), ov)
	}
}
