package names

import (
	"sync/atomic"
	"time"
)

// Result is what became of one query, the label of the queries metric.
type Result int

const (
	Local         Result = iota // answered with twill addresses
	Empty                       // a twill name, asked for another type (AAAA): empty NOERROR
	Forwarded                   // answered by an upstream resolver
	ForwardFailed               // no upstream answered: SERVFAIL
	Malformed                   // not a query twill answers: FORMERR or NOTIMP
	Dropped                     // from outside the overlay and the host: no answer at all
	numResults
)

var resultNames = [numResults]string{"local", "empty", "forwarded", "forward_failed", "malformed", "dropped"}

func (r Result) String() string { return resultNames[r] }

// ForwardBuckets are the upper bounds (seconds) of the forward latency
// histogram.
var ForwardBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// Stats counts queries by result and the latency of forwarded ones. Its
// methods are safe for concurrent use and never allocate.
type Stats struct {
	queries [numResults]atomic.Uint64
	buckets [14]atomic.Uint64 // len(ForwardBuckets)+1: the last is +Inf
	sumNs   atomic.Uint64
}

func (s *Stats) count(r Result) {
	if s != nil {
		s.queries[r].Add(1)
	}
}

func (s *Stats) forwardTook(d time.Duration) {
	if s == nil {
		return
	}
	sec := d.Seconds()
	i := 0
	for i < len(ForwardBuckets) && sec > ForwardBuckets[i] {
		i++
	}
	s.buckets[i].Add(1)
	s.sumNs.Add(uint64(d.Nanoseconds()))
}

// Snapshot is a copy of the counters.
type Snapshot struct {
	Queries        map[string]uint64 // by Result name
	ForwardCounts  []uint64          // per ForwardBuckets bound, not cumulative; last is +Inf
	ForwardSeconds float64           // sum of forward latencies
}

// Snapshot copies the counters.
func (s *Stats) Snapshot() Snapshot {
	out := Snapshot{Queries: make(map[string]uint64, numResults), ForwardCounts: make([]uint64, len(s.buckets))}
	for r := range numResults {
		out.Queries[r.String()] = s.queries[r].Load()
	}
	for i := range s.buckets {
		out.ForwardCounts[i] = s.buckets[i].Load()
	}
	out.ForwardSeconds = float64(s.sumNs.Load()) / 1e9
	return out
}

// Add sums snapshots (the resolvers of several overlays).
func (s Snapshot) Add(o Snapshot) Snapshot {
	if s.Queries == nil {
		s.Queries = map[string]uint64{}
		s.ForwardCounts = make([]uint64, len(ForwardBuckets)+1)
	}
	for k, v := range o.Queries {
		s.Queries[k] += v
	}
	for i := range o.ForwardCounts {
		s.ForwardCounts[i] += o.ForwardCounts[i]
	}
	s.ForwardSeconds += o.ForwardSeconds
	return s
}
