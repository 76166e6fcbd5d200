package overlay

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twill-net/twill/datapath/wireguard"
	"github.com/twill-net/twill/internal/testbed"
)

// BenchmarkDatapath is the benchmark harness behind `make bench`:
//
//	go test -run '^$' -bench Datapath -benchtime 1x ./datapath/overlay/
//
// On one two-host topology (root, iperf3 and busybox needed) it measures,
// in alternating rounds, the direct underlay, kernel VXLAN, twill's plain
// path and twill's offload path: iperf3 TCP throughput container to
// container at -P 1 and -P 4, ping RTT, and the forwarders' CPU, and
// prints a markdown table of medians with the ratios to VXLAN.
// TWILL_BENCH_ROUNDS (default 3) and TWILL_BENCH_SECONDS (default 5) set
// the size; TWILL_BENCH_MODES (comma-separated, default
// underlay,vxlan,plain,offload,busy,wireguard,wireguardcopying,kernel;
// "wireguard" is an encrypted overlay (datapath/wireguard, as twilld runs
// it), "wireguardcopying" the same on wireguard-go's own TUN and UDP bind;
// "kernel" the kernel datapath; "offload1p" is the fast path with
// GOMAXPROCS=1 in each forwarder) picks the paths; TWILL_BENCH_OUT names a
// file the table is also written to; TWILL_BENCH_PIN=0 runs the forwarders
// and ping on CPU 0 (a diagnostic, see pinned). Mode "kernel" is the
// kernel datapath (datapath/kernel) with the fast TUN path beside it,
// "kernelnogro" the same without its GRO stage.
// TWILL_BENCH_UNDERLAY=segmenting turns the underlay veths' TSO, GSO,
// tunnel GSO and checksum offload off, so every datagram crosses alone and
// checksummed as from a real NIC; =nic turns GRO on besides, as a NIC's
// driver hands frames to the stack (default: the veths' offloads on, which
// hand 64 KB super-packets across whole).
func BenchmarkDatapath(b *testing.B) {
	requireKernel(b)
	for _, tool := range []string{"iperf3", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("needs %s", tool)
		}
	}
	rounds := envInt("TWILL_BENCH_ROUNDS", 3)
	secs := envInt("TWILL_BENCH_SECONDS", 5)
	tp := newTopo(b, 2)
	rig := os.Getenv("TWILL_BENCH_UNDERLAY")
	segmenting := rig == "segmenting" || rig == "nic"
	for i, other := range []int{2, 1} {
		h := hostNS(i + 1)
		if segmenting {
			testbed.MustIn(b, h, "ethtool", "-K", "ul0", "tso", "off", "gso", "off", "tx-udp_tnl-segmentation", "off", "tx", "off")
		}
		if rig == "nic" {
			// As a host's NIC hands frames to the stack: through GRO.
			testbed.MustIn(b, h, "ethtool", "-K", "ul0", "gro", "on")
		}
		testbed.Must(b, "ip", "-n", h, "link", "add", "two-vx", "type", "vxlan", "id", "42",
			"local", underlayIP(i+1), "remote", underlayIP(other), "dstport", "4789", "dev", "ul0")
		testbed.Must(b, "ip", "-n", h, "addr", "add", fmt.Sprintf("10.98.0.%d/24", i+1), "dev", "two-vx")
		testbed.Must(b, "ip", "-n", h, "link", "set", "two-vx", "up")
	}
	// iperf3 servers: on host 2's underlay address and in container 2.
	testbed.Start(b, hostNS(2), filepath.Join(tp.dir, "iperf-h2.log"), nil, "iperf3", "-s", "-B", underlayIP(2))
	testbed.Start(b, containerNS(2), filepath.Join(tp.dir, "iperf-c2.log"), nil, "iperf3", "-s", "-B", containerIP(2))

	modes := []string{"underlay", "vxlan", "plain", "offload", "busy", "wireguard", "wireguardcopying", "kernel"}
	if m := os.Getenv("TWILL_BENCH_MODES"); m != "" {
		modes = strings.Split(m, ",") // must include vxlan for the ratios
	}
	res := map[string]*benchResult{}
	for _, m := range modes {
		res[m] = &benchResult{}
	}
	for b.Loop() {
		for round := 0; round < rounds; round++ {
			for _, m := range modes {
				tp.benchRound(b, m, secs, res[m])
			}
		}
	}
	table := benchTable(modes, res, rounds, secs, rig)
	fmt.Print(table)
	if out := os.Getenv("TWILL_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			b.Error(err)
		}
	}
	v1, v4 := median(res["vxlan"].p1), median(res["vxlan"].p4)
	if v1 > 0 && v4 > 0 {
		if o := res["offload"]; o != nil {
			b.ReportMetric(median(o.p1)/v1, "xVXLAN-P1")
			b.ReportMetric(median(o.p4)/v4, "xVXLAN-P4")
		}
		if k := res["kernel"]; k != nil {
			b.ReportMetric(median(k.p1)/v1, "kernel-xVXLAN-P1")
			b.ReportMetric(median(k.p4)/v4, "kernel-xVXLAN-P4")
		}
	}
}

// benchBusyPoll is Config.BusyPoll in bench mode "busy": longer than the
// ping interval, so pings find the forwarders polling.
const benchBusyPoll = 50 * time.Millisecond

type benchResult struct {
	p1, p4, rtt, cpu1, cpu4 []float64
	cpuPing                 []float64 // forwarders' CPU while pinging: sparse traffic
	perGB4                  []float64 // whole machine's CPU ms per GB moved at -P 4
	path                    string
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchRound sets the topology up for mode and measures once.
func (tp *testTopo) benchRound(b *testing.B, mode string, secs int, r *benchResult) {
	for i, other := range []int{2, 1} {
		testbed.In(hostNS(i+1), "ip", "route", "del", fmt.Sprintf("10.96.%d.0/24", other))
	}
	target, from := containerIP(2), containerNS(1)
	var fwds []*testFwd
	switch mode {
	case "underlay":
		target, from = underlayIP(2), hostNS(1)
	case "vxlan":
		for i, other := range []int{2, 1} {
			tp.setContainerMTU(i+1, 1450)
			testbed.Must(b, "ip", "-n", hostNS(i+1), "route", "replace", fmt.Sprintf("10.96.%d.0/24", other),
				"via", fmt.Sprintf("10.98.0.%d", other), "dev", "two-vx")
		}
	case "wireguard", "wireguard1p", "wireguardgc", "wireguardcopying":
		if mode == "wireguardcopying" {
			// The baseline of the encrypted path's copy-free TUN and bind:
			// wireguard-go's own.
			defer setenvFor("TWO_WG_COPYING", "1")()
		}
		if mode == "wireguard1p" {
			defer setenvFor("GOMAXPROCS", "1")()
		}
		if mode == "wireguardgc" {
			// A diagnostic: how much of the encrypted path's cost is Go's
			// garbage collector.
			defer setenvFor("GOGC", "off")()
		}
		var keys []string
		for range 2 {
			k, err := wireguard.GenerateKey()
			if err != nil {
				b.Fatal(err)
			}
			keys = append(keys, k.String())
		}
		tp.wg = keys
		defer func() { tp.wg = nil }()
		mtu := testMTU + 28 - wireguard.Overhead
		tp.setContainerMTU(1, mtu)
		tp.setContainerMTU(2, mtu)
		fwds = append(fwds, tp.startForwarder(1, OffloadAuto, 2), tp.startForwarder(2, OffloadAuto, 1))
		r.path = fwds[0].path
	case "plain", "offload", "offload1p", "busy", "kernel", "kernelnogro":
		off := map[string]string{"plain": OffloadOff, "offload": OffloadAuto, "offload1p": OffloadAuto, "busy": OffloadAuto, "kernel": OffloadAuto, "kernelnogro": OffloadAuto}[mode]
		if mode == "kernel" || mode == "kernelnogro" {
			tp.kern, tp.noGRO = true, mode == "kernelnogro"
			defer func() { tp.kern, tp.noGRO = false, false }()
		}
		if mode == "busy" {
			tp.busy = benchBusyPoll
			defer func() { tp.busy = 0 }()
		}
		if mode == "offload1p" {
			// The forwarder processes inherit the environment at start.
			old, had := os.LookupEnv("GOMAXPROCS")
			os.Setenv("GOMAXPROCS", "1")
			defer func() {
				if had {
					os.Setenv("GOMAXPROCS", old)
				} else {
					os.Unsetenv("GOMAXPROCS")
				}
			}()
		}
		tp.setContainerMTU(1, testMTU)
		tp.setContainerMTU(2, testMTU)
		fwds = append(fwds, tp.startForwarder(1, off, 2), tp.startForwarder(2, off, 1))
		r.path = fwds[0].path
	}
	defer func() {
		tp.stopAll()
		for i, f := range fwds {
			if k := f.kernel; k != nil {
				b.Logf("%s: kernel path on host %d left %d datagrams in and %d packets out to the TUN path (refused %d/%d), dropped %v",
					mode, i+1, k.PassedIn, k.PassedOut, k.RefusedIn, k.RefusedOut, k.Drops)
			}
		}
	}()
	r.cpuPing = append(r.cpuPing, cpuPercent(fwds, func() { r.rtt = append(r.rtt, pingP50(b, from, target)) }))
	for _, p := range []int{1, 4} {
		cpu0, busy0 := procCPU(fwds), machineBusy()
		t0 := time.Now()
		g, gb := iperf(b, from, target, p, secs)
		cpu := 100 * (procCPU(fwds) - cpu0) / time.Since(t0).Seconds()
		if p == 1 {
			r.p1, r.cpu1 = append(r.p1, g), append(r.cpu1, cpu)
		} else {
			r.p4, r.cpu4 = append(r.p4, g), append(r.cpu4, cpu)
			r.perGB4 = append(r.perGB4, 1000*(machineBusy()-busy0)/gb)
		}
	}
}

var rttRE = regexp.MustCompile(`time=([0-9.]+) ms`)

// setenvFor sets an environment variable for the forwarder processes
// started next (they inherit it) and returns what restores it.
func setenvFor(key, value string) func() {
	old, had := os.LookupEnv(key)
	os.Setenv(key, value)
	return func() {
		if had {
			os.Setenv(key, old)
		} else {
			os.Unsetenv(key)
		}
	}
}

// pingP50 returns the median RTT in ms of 40 pings from ns to addr, once
// one ping has been answered: an encrypted path's first packets wait for
// its handshake (up to a second after a peer starts), which is not the
// steady-state round trip this measures.
func pingP50(b *testing.B, ns, addr string) float64 {
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := testbed.In(ns, "busybox", "ping", "-c", "1", "-W", "1", addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("no ping answered from %s to %s within 10 s", ns, addr)
		}
	}
	args := pinned("busybox", "ping", "-c", "41", "-i", "0.025", "-W", "2", addr)
	out := testbed.MustIn(b, ns, args[0], args[1:]...)
	var v []float64
	for i, m := range rttRE.FindAllStringSubmatch(out, -1) {
		if i == 0 {
			continue // the first includes neighbour resolution
		}
		f, _ := strconv.ParseFloat(m[1], 64)
		v = append(v, f)
	}
	return median(v)
}

// iperf runs an iperf3 TCP client and returns the received Gbit/s and GB.
func iperf(b *testing.B, ns, addr string, p, secs int) (gbits, gbytes float64) {
	var out string
	var err error
	for try := 0; try < 20; try++ {
		out, err = testbed.In(ns, "iperf3", "-c", addr, "-t", strconv.Itoa(secs), "-P", strconv.Itoa(p), "-J")
		if err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond) // server still starting, or busy with the last client
	}
	if err != nil {
		b.Fatalf("iperf3 to %s: %v", addr, err)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         float64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		b.Fatalf("iperf3 output: %v", err)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, res.End.SumReceived.Bytes / 1e9
}

// machineBusy returns the CPU seconds all CPUs spent outside idle so far
// (/proc/stat: user, nice, system, irq, softirq, steal). Per GB moved it
// compares the paths' cost even when the host lends the VM more or less CPU
// from one round to the next, which throughput alone does not.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var s float64
	for i, v := range f[1:min(len(f), 9)] {
		if i == 3 || i == 4 {
			continue // idle, iowait
		}
		n, _ := strconv.ParseFloat(v, 64)
		s += n
	}
	return s / 100 // USER_HZ
}

// procCPU returns the CPU seconds the forwarder processes used so far.
func procCPU(fwds []*testFwd) float64 {
	var s float64
	for _, f := range fwds {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", f.proc.Cmd.Process.Pid))
		if err != nil {
			continue
		}
		// Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
		fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(fields) > 12 {
			u, _ := strconv.ParseFloat(fields[11], 64)
			k, _ := strconv.ParseFloat(fields[12], 64)
			s += (u + k) / 100 // USER_HZ
		}
	}
	return s
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func benchTable(modes []string, res map[string]*benchResult, rounds, secs int, rig string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\ntwill datapath benchmark: 2 hosts, iperf3 TCP %ds container to container, medians of %d alternating rounds", secs, rounds)
	switch rig {
	case "segmenting":
		sb.WriteString(", underlay veths segmenting and checksumming (tso, gso, tunnel gso, tx off)")
	case "nic":
		sb.WriteString(", underlay veths segmenting and checksumming (tso, gso, tunnel gso, tx off) with GRO on, as a NIC")
	}
	if c := os.Getenv("TWILL_BENCH_PIN"); c != "" {
		fmt.Fprintf(&sb, ", forwarders and ping pinned to CPU %s", c)
	}
	sb.WriteString("\n\n")
	sb.WriteString("| path | Gbit/s P1 | Gbit/s P4 | ÷ VXLAN P1 | ÷ VXLAN P4 | ping p50 ms | RTT ÷ VXLAN | forwarder CPU % ping / P1 / P4 | machine CPU ms per GB at P4 |\n")
	sb.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	v := res["vxlan"]
	if v == nil {
		v = &benchResult{} // no baseline measured: ratios are "–"
	}
	ratio := func(a, b float64) string {
		if b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	for _, m := range modes {
		r := res[m]
		name := map[string]string{
			"underlay": "direct underlay (host to host)", "vxlan": "kernel VXLAN",
			"plain": "twill plain (" + r.path + ")", "offload": "twill fast (" + r.path + ")", "offload1p": "twill fast GOMAXPROCS=1",
			"busy":             fmt.Sprintf("twill fast, busy poll %v", benchBusyPoll),
			"wireguard":        "twill encrypted (wireguard)",
			"wireguard1p":      "twill encrypted GOMAXPROCS=1",
			"wireguardgc":      "twill encrypted GOGC=off",
			"wireguardcopying": "twill encrypted, wireguard-go's TUN and bind",
			"kernel":           "twill kernel path (eBPF)",
			"kernelnogro":      "twill kernel path, no GRO stage",
		}[m]
		cpu := "–"
		if r.path != "" { // a forwarder mode
			cpu = fmt.Sprintf("%.0f / %.0f / %.0f", median(r.cpuPing), median(r.cpu1), median(r.cpu4))
		}
		fmt.Fprintf(&sb, "| %s | %.2f | %.2f | %s | %s | %.3f | %s | %s | %.0f |\n", name,
			median(r.p1), median(r.p4), ratio(median(r.p1), median(v.p1)), ratio(median(r.p4), median(v.p4)),
			median(r.rtt), ratio(median(r.rtt), median(v.rtt)), cpu, median(r.perGB4))
	}
	sb.WriteString("\nforwarder CPU: both forwarder processes together, % of one core, during the pings (40 a second)\n")
	sb.WriteString("and the iperf3 runs. machine CPU per GB: every CPU's\n")
	sb.WriteString("non-idle time (iperf3, kernel, forwarders) per GB received at -P 4.\n")
	return sb.String()
}
