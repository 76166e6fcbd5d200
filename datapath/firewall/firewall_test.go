package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeRunner records commands and answers them with fn.
type fakeRunner struct {
	mu    sync.Mutex
	calls []string // "name args..." per call
	stdin []string
	fn    func(line string, stdin []byte) ([]byte, error)
}

func (r *fakeRunner) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	line := strings.Join(append([]string{name}, args...), " ")
	r.mu.Lock()
	r.calls = append(r.calls, line)
	r.stdin = append(r.stdin, string(stdin))
	fn := r.fn
	r.mu.Unlock()
	if fn == nil {
		return nil, nil
	}
	return fn(line, stdin)
}

func (r *fakeRunner) take() (calls, stdin []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	calls, stdin = r.calls, r.stdin
	r.calls, r.stdin = nil, nil
	return calls, stdin
}

func newFake(t *testing.T) (*Firewall, *fakeRunner) {
	t.Helper()
	r := &fakeRunner{}
	f, err := New(context.Background(), Options{Runner: r, Backend: BackendNFT})
	if err != nil {
		t.Fatal(err)
	}
	return f, r
}

func TestApplyInsertsJumpsOnce(t *testing.T) {
	f, r := newFake(t)
	ctx := context.Background()
	present := map[string]bool{}
	r.fn = func(line string, _ []byte) ([]byte, error) {
		if _, rule, ok := strings.Cut(line, " -C "); ok {
			if !present[rule] {
				return nil, &CommandError{Cmd: line, Code: 1, Stderr: "iptables: Bad rule"}
			}
		}
		if _, rule, ok := strings.Cut(line, " -I "); ok {
			chain, spec, _ := strings.Cut(rule, " 1 ")
			present[chain+" "+spec] = true
		}
		return nil, nil
	}
	if err := f.EnsureNetwork(ctx, blue.Bridge, blue.Subnet, blue.Overlay, false); err != nil {
		t.Fatal(err)
	}
	calls, stdin := r.take()
	if calls[0] != "iptables-nft-restore -w --noflush" || stdin[0] != Render(State{Tunnel: "twill0", Networks: []Network{blue}}) {
		t.Fatalf("first call %q with input\n%s", calls[0], stdin[0])
	}
	wantInserts := []string{
		"iptables-nft -w -t filter -I FORWARD 1 -j TWILL-FORWARD",
		"iptables-nft -w -t nat -I POSTROUTING 1 -j TWILL-POSTROUTING",
		"iptables-nft -w -t nat -I PREROUTING 1 -m addrtype --dst-type LOCAL -j TWILL-DNAT",
		"iptables-nft -w -t nat -I OUTPUT 1 ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j TWILL-DNAT",
	}
	for _, w := range wantInserts {
		if !slices.Contains(calls, w) {
			t.Errorf("missing %q in %q", w, calls)
		}
	}
	// Second change soon after: the jumps were just verified, only the
	// chains are rewritten.
	clock := time.Now()
	f.now = func() time.Time { return clock }
	f.jumpsSeen = clock
	if err := f.EnsureNetwork(ctx, red.Bridge, red.Subnet, red.Overlay, false); err != nil {
		t.Fatal(err)
	}
	if calls, _ = r.take(); len(calls) != 1 {
		t.Errorf("calls %q, want the restore only", calls)
	}
	// Later: checked again, present, not inserted again.
	clock = clock.Add(jumpRecheck)
	if err := f.DeleteNetwork(ctx, red.Bridge); err != nil {
		t.Fatal(err)
	}
	calls, _ = r.take()
	for _, c := range calls {
		if strings.Contains(c, " -I ") {
			t.Errorf("jump inserted twice: %q", c)
		}
	}
	if len(calls) != 1+len(jumps) {
		t.Errorf("calls %q, want restore and %d checks", calls, len(jumps))
	}
	// Apply always checks (it is the repair path), and re-inserts what an
	// admin flushed.
	delete(present, "FORWARD -j TWILL-FORWARD")
	if err := f.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	calls, _ = r.take()
	if !slices.Contains(calls, wantInserts[0]) || len(calls) != 2+len(jumps) {
		t.Errorf("Apply after a flush ran %q", calls)
	}
}

func TestRestoreFailureQuotesRuleAndKeepsState(t *testing.T) {
	f, r := newFake(t)
	ctx := context.Background()
	if err := f.EnsureNetwork(ctx, blue.Bridge, blue.Subnet, blue.Overlay, false); err != nil {
		t.Fatal(err)
	}
	r.fn = func(line string, stdin []byte) ([]byte, error) {
		if strings.Contains(line, "restore") {
			return nil, &CommandError{Cmd: line, Code: 2, Stderr: "iptables-restore v1.8.9 (nf_tables): Couldn't load match `conntrack'\n\nError occurred at line: 4"}
		}
		return nil, nil
	}
	err := f.EnsureNetwork(ctx, red.Bridge, red.Subnet, red.Overlay, false)
	if err == nil {
		t.Fatal("no error")
	}
	want := Render(State{Tunnel: "twill0", Networks: []Network{blue, red}})
	line4 := strings.Split(want, "\n")[3]
	if !strings.Contains(err.Error(), line4) || !strings.Contains(err.Error(), "tw-red") || !strings.Contains(err.Error(), "conntrack") {
		t.Errorf("error %q should name the network, quote %q and carry the stderr", err, line4)
	}
	if _, ok := errors.AsType[*CommandError](err); !ok {
		t.Errorf("error %v does not wrap *CommandError", err)
	}
	// The failed network is not part of the state: the next change does
	// not carry it.
	if s := f.State(); len(s.Networks) != 1 || s.Networks[0].Bridge != "tw-blue" {
		t.Errorf("state after failure: %+v", s.Networks)
	}
	// Kernel-side failures are reported as "line N failed".
	r.fn = func(line string, stdin []byte) ([]byte, error) {
		if strings.Contains(line, "restore") {
			return nil, &CommandError{Cmd: line, Code: 1, Stderr: "iptables-restore: line 6 failed"}
		}
		return nil, nil
	}
	err = f.EnsureNetwork(ctx, red.Bridge, red.Subnet, red.Overlay, false)
	if line6 := strings.Split(want, "\n")[5]; err == nil || !strings.Contains(err.Error(), line6) {
		t.Errorf("error %v should quote %q", err, line6)
	}
}

func TestJumpCheckFailureIsReported(t *testing.T) {
	f, r := newFake(t)
	r.fn = func(line string, _ []byte) ([]byte, error) {
		if strings.Contains(line, " -C ") {
			return nil, &CommandError{Cmd: line, Code: 4, Stderr: "iptables: Permission denied (you must be root)"}
		}
		return nil, nil
	}
	err := f.EnsureNetwork(context.Background(), blue.Bridge, blue.Subnet, blue.Overlay, false)
	if err == nil || !strings.Contains(err.Error(), "Permission denied") || !strings.Contains(err.Error(), "FORWARD -j TWILL-FORWARD") {
		t.Errorf("got %v", err)
	}
}

func TestPortMaps(t *testing.T) {
	f, r := newFake(t)
	ctx := context.Background()
	c := netip.MustParseAddrPort("10.96.3.2:80")
	any4 := netip.MustParseAddr("0.0.0.0")
	one := netip.MustParseAddr("192.0.2.10")
	if err := f.AddPortMap(ctx, "tw-blue", "TCP", netip.Addr{}, 8080, c); err != nil {
		t.Fatal(err)
	}
	// 0.0.0.0 and the zero Addr are the same map: idempotent.
	if err := f.AddPortMap(ctx, "tw-blue", "tcp", any4, 8080, c); err != nil {
		t.Fatalf("same map again: %v", err)
	}
	if n := len(f.State().PortMaps); n != 1 {
		t.Fatalf("%d port maps, want 1", n)
	}
	other := netip.MustParseAddrPort("10.96.3.3:80")
	for _, hostIP := range []netip.Addr{{}, one, netip.MustParseAddr("::")} {
		err := f.AddPortMap(ctx, "tw-blue", "tcp", hostIP, 8080, other)
		if !errors.Is(err, ErrPortAllocated) || !strings.Contains(err.Error(), "8080") || !strings.Contains(err.Error(), "10.96.3.2:80") {
			t.Errorf("host %v: %v, want ErrPortAllocated naming the port and holder", hostIP, err)
		}
	}
	// Another protocol on the same port is free.
	if err := f.AddPortMap(ctx, "tw-blue", "udp", one, 8080, other); err != nil {
		t.Fatal(err)
	}
	r.take()
	if err := f.DeletePortMap(ctx, "tw-blue", "tcp", any4, 8080, c); err != nil {
		t.Fatal(err)
	}
	if calls, _ := r.take(); len(calls) == 0 {
		t.Error("delete applied nothing")
	}
	// Unknown maps and networks: success, nothing run.
	if err := f.DeletePortMap(ctx, "tw-blue", "tcp", any4, 8080, c); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteNetwork(ctx, "tw-nothere"); err != nil {
		t.Fatal(err)
	}
	if calls, _ := r.take(); len(calls) != 0 {
		t.Errorf("deleting unknown things ran %q", calls)
	}
	// Deleting the network takes its port maps along.
	if err := f.EnsureNetwork(ctx, blue.Bridge, blue.Subnet, blue.Overlay, false); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteNetwork(ctx, blue.Bridge); err != nil {
		t.Fatal(err)
	}
	if s := f.State(); len(s.Networks)+len(s.PortMaps) != 0 {
		t.Errorf("state after DeleteNetwork: %+v", s)
	}
}

func TestInvalidArgumentsChangeNothing(t *testing.T) {
	f, r := newFake(t)
	ctx := context.Background()
	p := netip.MustParsePrefix
	for _, err := range []error{
		f.EnsureNetwork(ctx, "tw+", blue.Subnet, blue.Overlay, false),
		f.EnsureNetwork(ctx, "tw-0123456789abcdef", blue.Subnet, blue.Overlay, false),
		f.EnsureNetwork(ctx, "twill0", blue.Subnet, blue.Overlay, false),
		f.EnsureNetwork(ctx, "tw-a", p("fd00::/64"), p("fd00::/48"), false),
		f.EnsureNetwork(ctx, "tw-a", p("10.96.3.1/24"), blue.Overlay, false),
		f.EnsureNetwork(ctx, "tw-a", p("10.97.3.0/24"), blue.Overlay, false),
		f.EnsureNetwork(ctx, "tw-a", netip.Prefix{}, blue.Overlay, false),
		f.AddPortMap(ctx, "tw-a", "sctp", netip.Addr{}, 80, netip.MustParseAddrPort("10.96.3.2:80")),
		f.AddPortMap(ctx, "tw-a", "tcp", netip.Addr{}, 0, netip.MustParseAddrPort("10.96.3.2:80")),
		f.AddPortMap(ctx, "tw-a", "tcp", netip.Addr{}, 80, netip.MustParseAddrPort("10.96.3.2:0")),
		f.AddPortMap(ctx, "tw-a", "tcp", netip.MustParseAddr("2001:db8::1"), 80, netip.MustParseAddrPort("10.96.3.2:80")),
		f.AddPortMap(ctx, "tw-a", "tcp", netip.Addr{}, 80, netip.MustParseAddrPort("[fd00::2]:80")),
	} {
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("got %v, want ErrInvalidArgument", err)
		}
	}
	if calls, _ := r.take(); len(calls) != 0 {
		t.Errorf("invalid arguments ran %q", calls)
	}
}

func TestCleanupRemovesEveryJumpCopy(t *testing.T) {
	f, r := newFake(t)
	copies := map[string]int{"FORWARD": 2, "POSTROUTING": 1, "PREROUTING": 0, "OUTPUT": 1}
	r.fn = func(line string, _ []byte) ([]byte, error) {
		if _, rule, ok := strings.Cut(line, " -D "); ok {
			chain, _, _ := strings.Cut(rule, " ")
			if copies[chain] == 0 {
				return nil, &CommandError{Cmd: line, Code: 1}
			}
			copies[chain]--
		}
		return nil, nil
	}
	if err := f.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	calls, stdin := r.take()
	for chain, n := range copies {
		if n != 0 {
			t.Errorf("%d jumps left in %s", n, chain)
		}
	}
	last := len(calls) - 1
	if calls[last] != "iptables-nft-restore -w --noflush" || stdin[last] != renderDelete() {
		t.Errorf("last call %q with\n%s", calls[last], stdin[last])
	}
}

func TestDetectBackend(t *testing.T) {
	save := func(nft, legacy string, nftErr, legacyErr bool) func(string, []byte) ([]byte, error) {
		return func(line string, _ []byte) ([]byte, error) {
			switch line {
			case "iptables-nft-save":
				if nftErr {
					return nil, errors.New("exec: not found")
				}
				return []byte(nft), nil
			case "iptables-legacy-save":
				if legacyErr {
					return nil, errors.New("exec: not found")
				}
				return []byte(legacy), nil
			}
			return nil, nil
		}
	}
	dockerRules := "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\nCOMMIT\n"
	for _, tc := range []struct {
		name              string
		nft, legacy       string
		nftErr, legacyErr bool
		want              Backend
	}{
		{"fresh host", "", "", false, false, BackendNFT},
		{"docker on nft", dockerRules, "", false, false, BackendNFT},
		{"docker on legacy", "", dockerRules, false, false, BackendLegacy},
		{"only legacy binary", "", "", true, false, BackendLegacy},
		{"only nft binary", "", "", false, true, BackendNFT},
		{"only plain iptables", "", "", true, true, BackendPlain},
	} {
		r := &fakeRunner{fn: save(tc.nft, tc.legacy, tc.nftErr, tc.legacyErr)}
		f, err := New(context.Background(), Options{Runner: r})
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if f.Backend() != tc.want {
			t.Errorf("%s: backend %s, want %s", tc.name, f.Backend(), tc.want)
		}
	}
	if _, err := New(context.Background(), Options{Runner: &fakeRunner{}, Backend: "ebpf"}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("unknown backend: %v", err)
	}
}

func TestConcurrentChanges(t *testing.T) {
	f, r := newFake(t)
	ctx := context.Background()
	if err := f.EnsureNetwork(ctx, blue.Bridge, blue.Subnet, blue.Overlay, false); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			c := netip.AddrPortFrom(netip.MustParseAddr("10.96.3.2"), uint16(1000+i))
			if err := f.AddPortMap(ctx, blue.Bridge, "tcp", netip.Addr{}, uint16(8000+i), c); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := len(f.State().PortMaps); n != 50 {
		t.Fatalf("%d port maps, want 50", n)
	}
	// The last restore written holds every map: no change was lost to a
	// concurrent one.
	_, stdin := r.take()
	last := ""
	for _, in := range stdin {
		if in != "" {
			last = in
		}
	}
	if n := strings.Count(last, "-j DNAT"); n != 50 {
		t.Errorf("last restore has %d DNAT rules, want 50", n)
	}
}

// queueWhileWriting holds the write lock while n AddPortMap calls (one per
// port) queue up, then lets them go: they are written as one batch.
func queueWhileWriting(t *testing.T, f *Firewall, ports []uint16) map[uint16]error {
	t.Helper()
	ctx := context.Background()
	f.writeMu.Lock()
	errs := make(map[uint16]error)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, p := range ports {
		wg.Go(func() {
			c := netip.AddrPortFrom(netip.MustParseAddr("10.96.3.2"), uint16(1000+i))
			err := f.AddPortMap(ctx, blue.Bridge, "tcp", netip.Addr{}, p, c)
			mu.Lock()
			errs[p] = err
			mu.Unlock()
		})
	}
	for {
		f.mu.Lock()
		n := len(f.queue)
		f.mu.Unlock()
		if n == len(ports) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	f.writeMu.Unlock()
	wg.Wait()
	return errs
}

func TestConcurrentChangesShareOneWrite(t *testing.T) {
	f, r := newFake(t)
	f.jumpsSeen = time.Now() // only restores are counted
	errs := queueWhileWriting(t, f, []uint16{8000, 8001, 8002, 8003, 8004})
	for p, err := range errs {
		if err != nil {
			t.Errorf("port %d: %v", p, err)
		}
	}
	calls, stdin := r.take()
	if len(calls) != 1 || strings.Count(stdin[0], "-j DNAT") != 5 {
		t.Errorf("5 concurrent changes ran %q, want one restore with 5 DNAT rules", calls)
	}
}

func TestFailedSharedWriteRetriesEachChange(t *testing.T) {
	f, r := newFake(t)
	f.jumpsSeen = time.Now()
	// The kernel refuses the rule for port 666 (say, a missing module).
	r.fn = func(line string, stdin []byte) ([]byte, error) {
		for i, l := range strings.Split(string(stdin), "\n") {
			if strings.Contains(l, "--dport 666 ") {
				return nil, &CommandError{Cmd: line, Code: 1, Stderr: fmt.Sprintf("iptables-restore: line %d failed", i+1)}
			}
		}
		return nil, nil
	}
	errs := queueWhileWriting(t, f, []uint16{8000, 666, 8001})
	if errs[8000] != nil || errs[8001] != nil {
		t.Errorf("good changes failed: %v", errs)
	}
	if !strings.Contains(fmt.Sprint(errs[666]), "--dport 666") {
		t.Errorf("bad change: %v, want the refused rule quoted", errs[666])
	}
	if s := f.State(); len(s.PortMaps) != 2 {
		t.Errorf("state holds %d maps, want the 2 good ones", len(s.PortMaps))
	}
	if calls, _ := r.take(); len(calls) != 4 {
		t.Errorf("ran %d restores, want 1 shared and 3 single", len(calls))
	}
}
