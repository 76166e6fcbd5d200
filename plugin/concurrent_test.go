package plugin

import (
	"fmt"
	"sync"
	"testing"
)

// TestConcurrentContainers starts and stops 40 containers at once through
// the socket: no address is held by two live containers, every one gets its
// veth and port, and everything is gone afterwards.
func TestConcurrentContainers(t *testing.T) {
	s := startStack(t, Options{})
	c := s.c
	c.ok(t, "IpamDriver.RequestPool", reqPoolBlue)
	c.ok(t, "IpamDriver.RequestAddress", reqGateway)
	c.ok(t, "NetworkDriver.CreateNetwork", createNetBlue)

	const n = 40
	var (
		mu   sync.Mutex
		live = map[string]string{} // address -> endpoint
		wg   sync.WaitGroup
	)
	started := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ep := fmt.Sprintf("%08x%056d", 0xc0000000+i, 0)
			ids := `"NetworkID":"` + netID + `","EndpointID":"` + ep + `"`
			ports := fmt.Sprintf(`"Options":{"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":%d,"HostPortEnd":%d}]}`, 9000+i, 9000+i)
			<-started
			addr := addrOfT(t, c.ok(t, "IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"","Options":null}`))
			mu.Lock()
			if other, dup := live[addr]; dup {
				t.Errorf("%s handed to %s while %s holds it", addr, ep, other)
			}
			live[addr] = ep
			mu.Unlock()
			c.ok(t, "NetworkDriver.CreateEndpoint", `{`+ids+`,"Interface":{"Address":"`+addr+`/24","AddressIPv6":"","MacAddress":""},`+ports+`}`)
			c.ok(t, "NetworkDriver.Join", `{`+ids+`,"SandboxKey":"x",`+ports+`}`)
			c.ok(t, "NetworkDriver.ProgramExternalConnectivity", `{`+ids+`,`+ports+`}`)
			if _, ok := s.links.Veth("twv" + ep[:8]); !ok {
				t.Errorf("no veth for %s", ep)
			}
			c.ok(t, "NetworkDriver.RevokeExternalConnectivity", `{`+ids+`}`)
			c.ok(t, "NetworkDriver.Leave", `{`+ids+`}`)
			c.ok(t, "NetworkDriver.DeleteEndpoint", `{`+ids+`}`)
			mu.Lock()
			delete(live, addr)
			mu.Unlock()
			c.ok(t, "IpamDriver.ReleaseAddress", `{"PoolID":"`+poolID+`","Address":"`+addr+`"}`)
		}()
	}
	close(started)
	wg.Wait()
	if _, nv := s.links.Counts(); nv != 0 || len(s.fw.PortMaps()) != 0 {
		t.Fatalf("%d veths and %v port maps left", nv, s.fw.PortMaps())
	}
	if got := len(s.ipam.Allocations()); got != 1 {
		t.Fatalf("%d allocations left, want only the gateway", got)
	}
}

func addrOfT(t *testing.T, body string) string {
	t.Helper()
	return addrOf(t, body).String()
}
