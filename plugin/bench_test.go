package plugin

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// latencies records call durations and reports their percentiles.
type latencies struct {
	mu sync.Mutex
	d  map[string][]time.Duration
}

func (l *latencies) time(b *testing.B, method string, fn func() (int, string, error)) string {
	start := time.Now()
	status, body, err := fn()
	el := time.Since(start)
	if err != nil || status != http.StatusOK {
		b.Fatalf("%s: HTTP %d %s %v", method, status, body, err)
	}
	l.mu.Lock()
	if l.d == nil {
		l.d = map[string][]time.Duration{}
	}
	l.d[method] = append(l.d[method], el)
	l.mu.Unlock()
	return body
}

func (l *latencies) report(b *testing.B) {
	for method, d := range l.d {
		slices.Sort(d)
		p := func(q int) float64 { return float64(d[(len(d)-1)*q/100].Microseconds()) }
		b.ReportMetric(p(50), method+"-p50-µs")
		b.ReportMetric(p(99), method+"-p99-µs")
	}
}

func benchStack(b *testing.B) *stack {
	s := startStack(b, Options{})
	s.c.ok(b, "IpamDriver.RequestPool", reqPoolBlue)
	s.c.ok(b, "IpamDriver.RequestAddress", reqGateway)
	s.c.ok(b, "NetworkDriver.CreateNetwork", createNetBlue)
	return s
}

// BenchmarkRequestAddress measures RequestAddress through the socket, with
// the allocation fsynced to the state file before the answer.
func BenchmarkRequestAddress(b *testing.B) {
	s := benchStack(b)
	var lat latencies
	for b.Loop() {
		body := lat.time(b, "RequestAddress", func() (int, string, error) {
			return s.c.post("IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"","Options":null}`)
		})
		s.c.ok(b, "IpamDriver.ReleaseAddress", `{"PoolID":"`+poolID+`","Address":"`+addrOfB(b, body)+`"}`)
	}
	lat.report(b)
}

// BenchmarkRequestAddressParallel is RequestAddress from 8 concurrent
// clients per core: group commit shares fsyncs between them.
func BenchmarkRequestAddressParallel(b *testing.B) {
	s := benchStack(b)
	var lat latencies
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := lat.time(b, "RequestAddress", func() (int, string, error) {
				return s.c.post("IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"","Options":null}`)
			})
			s.c.ok(b, "IpamDriver.ReleaseAddress", `{"PoolID":"`+poolID+`","Address":"`+addrOfB(b, body)+`"}`)
		}
	})
	lat.report(b)
}

// BenchmarkCreateEndpointJoin measures a container start's driver calls
// (fake kernel): CreateEndpoint and Join, each persisted before answering.
func BenchmarkCreateEndpointJoin(b *testing.B) {
	s := benchStack(b)
	var lat latencies
	i := 0
	for b.Loop() {
		i++
		ep := fmt.Sprintf("%08x%056d", i, 0)
		ids := `"NetworkID":"` + netID + `","EndpointID":"` + ep + `"`
		addr := addrOfB(b, s.c.ok(b, "IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"","Options":null}`))
		lat.time(b, "CreateEndpoint", func() (int, string, error) {
			return s.c.post("NetworkDriver.CreateEndpoint", `{`+ids+`,"Interface":{"Address":"`+addr+`/24","AddressIPv6":"","MacAddress":""},"Options":{}}`)
		})
		lat.time(b, "Join", func() (int, string, error) {
			return s.c.post("NetworkDriver.Join", `{`+ids+`,"SandboxKey":"/var/run/docker/netns/x","Options":{}}`)
		})
		s.c.ok(b, "NetworkDriver.Leave", `{`+ids+`}`)
		s.c.ok(b, "NetworkDriver.DeleteEndpoint", `{`+ids+`}`)
		s.c.ok(b, "IpamDriver.ReleaseAddress", `{"PoolID":"`+poolID+`","Address":"`+addr+`"}`)
	}
	lat.report(b)
}

func addrOfB(b *testing.B, body string) string {
	var a string
	for i := range len(body) {
		if body[i] == '"' && len(body) > i+11 && body[i:i+11] == `"Address":"` {
			rest := body[i+11:]
			for j := range len(rest) {
				if rest[j] == '/' || rest[j] == '"' {
					a = rest[:j]
					break
				}
			}
			break
		}
	}
	if a == "" {
		b.Fatalf("no address in %s", body)
	}
	return a
}
