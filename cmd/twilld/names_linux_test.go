package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/internal/testbed"
)

// fakeDockerd serves the part of dockerd's API the names watcher reads
// (ping, container list and inspect, the event stream) on a Unix socket,
// for containers the test declares.
type fakeDockerd struct {
	sock   string
	srv    *http.Server
	mu     sync.Mutex
	ctrs   map[string]map[string]any // id -> inspect JSON
	events chan string               // container IDs
}

func newFakeDockerd(t *testing.T) *fakeDockerd {
	f := &fakeDockerd{sock: filepath.Join(t.TempDir(), "docker.sock"), ctrs: map[string]map[string]any{}, events: make(chan string, 16)}
	f.listen(t)
	t.Cleanup(func() { f.srv.Close() })
	return f
}

func (f *fakeDockerd) listen(t *testing.T) {
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = &http.Server{Handler: http.HandlerFunc(f.serve)}
	go f.srv.Serve(ln)
}

// restart stops serving (the socket file goes, as when dockerd exits),
// runs change while no dockerd answers, then serves again on a new socket
// at the same path: what twilld sees must come from its resync alone.
func (f *fakeDockerd) restart(t *testing.T, change func()) {
	f.srv.Close()
	if _, err := os.Stat(f.sock); !os.IsNotExist(err) {
		t.Fatalf("the fake dockerd's socket is still there after it stopped: %v", err)
	}
	change()
	f.listen(t)
}

func (f *fakeDockerd) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Api-Version", "1.41")
	w.Header().Set("Content-Type", "application/json")
	path := r.URL.Path
	if i := strings.Index(path[1:], "/"); strings.HasPrefix(path, "/v1.") && i > 0 {
		path = path[i+1:]
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case path == "/_ping":
		w.Write([]byte("OK"))
	case path == "/containers/json":
		var list []map[string]string
		for id := range f.ctrs {
			list = append(list, map[string]string{"Id": id})
		}
		json.NewEncoder(w).Encode(list)
	case strings.HasPrefix(path, "/containers/") && strings.HasSuffix(path, "/json"):
		c, ok := f.ctrs[strings.TrimSuffix(strings.TrimPrefix(path, "/containers/"), "/json")]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"message":"No such container"}`))
			return
		}
		json.NewEncoder(w).Encode(c)
	case path == "/events":
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		f.mu.Unlock()
		defer f.mu.Lock()
		for {
			select {
			case <-r.Context().Done():
				return
			case id := <-f.events:
				fmt.Fprintf(w, `{"Type":"container","Action":"start","Actor":{"ID":%q}}`+"\n", id)
				w.(http.Flusher).Flush()
			}
		}
	default:
		http.NotFound(w, r)
	}
}

// set declares container id (running with c on network, or gone when c is
// the zero Container) and sends its event.
func (f *fakeDockerd) set(id, name, network, networkID string, c testbed.Container, aliases ...string) {
	f.declare(id, name, network, networkID, c, aliases...)
	f.events <- id
}

// declare is set without the event.
func (f *fakeDockerd) declare(id, name, network, networkID string, c testbed.Container, aliases ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c.Endpoint == "" {
		delete(f.ctrs, id)
		return
	}
	f.ctrs[id] = map[string]any{"Id": id, "Name": "/" + name, "State": map[string]any{"Running": true},
		"NetworkSettings": map[string]any{"Networks": map[string]any{network: map[string]any{
			"NetworkID": networkID, "EndpointID": c.Endpoint, "IPAddress": c.Addr.Addr().String(), "Aliases": aliases}}}}
}

// roleDNSUpstream answers the zone twe. on addr (UDP and TCP): www.twe A
// 198.51.100.80, anything else NXDOMAIN.
func roleDNSUpstream(addr string) int {
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if strings.EqualFold(q.Question[0].Name, "www.twe.") {
			rr, _ := dns.NewRR("www.twe. 60 IN A 198.51.100.80")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	errs := make(chan error, 2)
	for _, n := range []string{"udp", "tcp"} {
		go func() { errs <- (&dns.Server{Addr: addr, Net: n, Handler: h}).ListenAndServe() }()
	}
	fmt.Fprintln(os.Stderr, <-errs)
	return 1
}

// roleDNSQuery asks server for name (A) over proto and prints
// "RCODE addr addr…", or fails.
func roleDNSQuery(server, proto, name string) int {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	resp, _, err := (&dns.Client{Net: proto, Timeout: time.Second}).Exchange(q, server)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	out := []string{dns.RcodeToString[resp.Rcode]}
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	fmt.Println(strings.Join(out, " "))
	return 0
}

func dnsQuery(ns, proto, name string) string {
	out, _ := testbed.In(ns, "env", "TWILL_TEST_ROLE=dnsquery", os.Args[0], "10.96.0.53:53", proto, name)
	return strings.TrimSpace(out)
}

// untilQuery polls a query from ns until its answer is want; it returns
// how long that took.
func untilQuery(t *testing.T, ns, name, want string, within time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	got := ""
	for time.Since(t0) < within {
		if got = dnsQuery(ns, "udp", name); got == want {
			return time.Since(t0)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s from %s: %q, want %q after %v", name, ns, got, want, within)
	return 0
}

// Two real twilld hosts learn names from (fake) dockerds, publish them in
// a real etcd and answer them on 10.96.0.53 to a container on the other
// host; external names go to an upstream on the underlay; the overlay's
// outside gets no answer; a killed host's names vanish.
func TestNamesAcrossHosts(t *testing.T) {
	c := newCluster(t, "twkn")
	up := testbed.Start(t, c.bed.UnderlayNS(), filepath.Join(c.dir, "dns.log"), []string{"TWILL_TEST_ROLE=dnsupstream"}, os.Args[0], "10.199.0.250:53")
	defer up.Kill()
	d1, d2 := newFakeDockerd(t), newFakeDockerd(t)
	h1 := c.start(1, "--docker-socket", d1.sock, "--dns-upstream", "10.199.0.250")
	h2 := c.start(2, "--docker-socket", d2.sock, "--dns-upstream", "10.199.0.250")
	h1.net = h1.docker.CreateNetwork(t, testbed.ID("blue-1"), "10.96.0.0/16", nil)
	h2.net = h2.docker.CreateNetwork(t, testbed.ID("blue-2"), "10.96.0.0/16", nil)
	web := c.container(h1, "twkn-web")
	cli := c.container(h2, "twkn-cli")
	other := c.container(h1, "twkn-other")

	t0 := time.Now()
	d1.set("c-web", "proj-web-1", "blue", h1.net.ID, web, "web")
	d1.set("c-other", "other", "red", h1.net.ID, other) // same overlay, another network name
	d2.set("c-cli", "client", "blue", h2.net.ID, cli)
	wantWeb := "NOERROR " + web.Addr.Addr().String()
	untilQuery(t, cli.NS, "web", wantWeb, 10*time.Second)
	t.Logf("web on h1 resolved on h2 %v after its start event", time.Since(t0).Round(time.Millisecond))
	for _, c := range []struct{ proto, name, want string }{
		{"tcp", "web", wantWeb},
		{"udp", "proj-web-1", wantWeb},
		{"udp", "www.twe", "NOERROR 198.51.100.80"},
		{"tcp", "www.twe", "NOERROR 198.51.100.80"},
		{"udp", "other", "NXDOMAIN"}, // red's name, not visible on blue
	} {
		if got := dnsQuery(cli.NS, c.proto, c.name); got != c.want {
			t.Errorf("%s over %s from h2: %q, want %q", c.name, c.proto, got, c.want)
		}
	}
	var s control.Status
	if err := h2.ctl.Get(context.Background(), "status", &s); err != nil || s.Overlays[0].Resolver != "10.96.0.53" || !strings.HasPrefix(s.Overlays[0].ResolverState, "serving") {
		t.Errorf("status on h2: %v %+v", err, s.Overlays)
	}
	var names []control.Name
	if err := h2.ctl.Get(context.Background(), "names", &names); err != nil || len(names) < 4 {
		t.Errorf("names on h2: %v %+v", err, names)
	}

	// Not an open resolver: a query from the underlay (routed to h2's
	// resolver address) gets no answer.
	testbed.MustIn(t, c.bed.UnderlayNS(), "ip", "route", "replace", "10.96.0.53/32", "via", c.bed.Addr(2).String())
	if got, _ := testbed.In(c.bed.UnderlayNS(), "env", "TWILL_TEST_ROLE=dnsquery", os.Args[0], "10.96.0.53:53", "udp", "www.twe"); !strings.HasPrefix(got, "error") {
		t.Errorf("a query from outside the overlay was answered: %q", got)
	}

	// The container stops: gone on h2 within 2 s.
	d1.set("c-web", "", "", "", testbed.Container{})
	d := untilQuery(t, cli.NS, "web", "NXDOMAIN", 2*time.Second)
	t.Logf("stopped web left h2's answers after %v", d.Round(time.Millisecond))
	d1.set("c-web", "proj-web-1", "blue", h1.net.ID, web, "web")
	untilQuery(t, cli.NS, "web", wantWeb, 2*time.Second)

	// h1's dockerd restarts with its containers changed meanwhile (web
	// gone, web2 started), as after a live-restore restart where twilld
	// keeps running: the new socket is followed and nothing stale stays.
	web2 := c.container(h1, "twkn-web2")
	t0 = time.Now()
	d1.restart(t, func() {
		d1.declare("c-web", "", "", "", testbed.Container{})
		d1.declare("c-web2", "proj-web-2", "blue", h1.net.ID, web2, "web")
	})
	untilQuery(t, cli.NS, "web", "NOERROR "+web2.Addr.Addr().String(), 5*time.Second)
	if got := dnsQuery(cli.NS, "udp", "proj-web-1"); got != "NXDOMAIN" {
		t.Errorf("proj-web-1, gone while h1's dockerd was down, still answers on h2: %q", got)
	}
	t.Logf("h1's dockerd restarted: h2 answers its new containers %v later", time.Since(t0).Round(time.Millisecond))

	// h1 dies: its names vanish on h2 within 15 s.
	h1.proc.Kill()
	d = untilQuery(t, cli.NS, "web", "NXDOMAIN", 15*time.Second)
	t.Logf("h1 killed: its names left h2's answers after %v", d.Round(time.Millisecond))
}
