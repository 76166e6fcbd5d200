package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/twill-net/twill/internal/control"
)

// finding is one doctor check: its name, whether it passed, what was seen
// and, when it failed, what to do.
type finding struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// doctor runs every check against this host and the daemon's view of it.
func doctor(ctx context.Context, c *control.Client) []finding {
	var st control.Status
	var peers control.Peers
	var out []finding
	if err := c.Get(ctx, "status", &st); err != nil {
		// the host's own settings still tell why twilld may not start
		// (a managed plugin cannot turn on ip_forward itself)
		return []finding{{Check: "twilld", Detail: err.Error(), Fix: "start twilld (or enable the plugin: docker plugin enable twill:latest) and run twillctl as root; twilld's log (dockerd's, for the plugin) says why it stopped"},
			checkForwarding(), checkForwardPolicy()}
	}
	if err := c.Get(ctx, "peers", &peers); err != nil {
		out = append(out, finding{Check: "twilld", Detail: err.Error(), Fix: "see twilld's log"})
	}
	out = append(out, checkEtcd(st), checkForwarding(), checkRPFilter())
	var overlays []netip.Prefix
	for _, o := range st.Overlays {
		if p, err := netip.ParsePrefix(o.Network); err == nil {
			overlays = append(overlays, p)
		}
	}
	out = append(out, checkRoutes(overlays), checkBridgeNF(), checkForwardPolicy())
	out = append(out, checkPeers(ctx, st, peers)...)
	out = append(out, checkClock(ctx, st))
	return out
}

func checkEtcd(st control.Status) finding {
	f := finding{Check: "etcd reachable", OK: st.EtcdHealthy, Detail: st.Etcd}
	if !st.EtcdHealthy {
		f.Detail = st.Etcd + ": " + st.EtcdError
		f.Fix = "check ETCD_ENDPOINTS (and TLS files) and that etcd runs; traffic between existing containers goes on meanwhile, new hosts cannot join"
	}
	return f
}

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
	return strings.TrimSpace(string(b)), err
}

func checkForwarding() finding {
	v, err := readSysctl("net.ipv4.ip_forward")
	f := finding{Check: "ip_forward", OK: v == "1", Detail: "net.ipv4.ip_forward=" + v}
	if err != nil {
		f.Detail = err.Error()
	}
	if !f.OK {
		f.Fix = "sysctl -w net.ipv4.ip_forward=1 and keep it in /etc/sysctl.d, then restart twill (Docker sets it unless dockerd has --ip-forward=false or \"firewall-backend\": \"nftables\"; a twilld outside Docker sets it at start)"
	}
	return f
}

// checkRPFilter flags strict reverse-path filtering on twill0 or "all":
// the kernel uses the higher of the two.
func checkRPFilter() finding {
	all, _ := readSysctl("net.ipv4.conf.all.rp_filter")
	tun, err := readSysctl("net.ipv4.conf.twill0.rp_filter")
	if err != nil {
		return finding{Check: "rp_filter", Detail: "no twill0: " + err.Error(), Fix: "twill0 is missing: is twilld running and holding a lease? see twillctl status"}
	}
	f := finding{Check: "rp_filter", OK: all != "1" && tun != "1", Detail: fmt.Sprintf("all=%s twill0=%s", all, tun)}
	if !f.OK {
		f.Fix = "strict reverse-path filtering drops overlay traffic whose source route differs; set loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.twill0.rp_filter=2"
	}
	return f
}

// checkRoutes finds routes that overlap an overlay but do not go through
// twill0 or a twill bridge: they steal the overlay's traffic.
func checkRoutes(overlays []netip.Prefix) finding {
	f := finding{Check: "routes", OK: true, Detail: "no route overlaps the overlay"}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return finding{Check: "routes", Detail: err.Error()}
	}
	var bad []string
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		dst, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		p := netip.PrefixFrom(dst, ones)
		name := ""
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		if name == "twill0" || strings.HasPrefix(name, "tw-") {
			continue
		}
		for _, o := range overlays {
			// A wider route (the default route, 10.0.0.0/8) loses to twill0's
			// overlay route; one inside the overlay wins and steals traffic.
			if p.Bits() >= o.Bits() && o.Overlaps(p) {
				bad = append(bad, fmt.Sprintf("%s dev %s", p, name))
			}
		}
	}
	if len(bad) > 0 {
		f.OK = false
		f.Detail = "routes overlapping the overlay: " + strings.Join(bad, ", ")
		f.Fix = "remove them (ip route del ...) or choose another overlay network (TWILL_NETWORK / --subnet); Docker's own networks must not use the overlay's range"
	}
	return f
}

func checkBridgeNF() finding {
	v, err := readSysctl("net.bridge.bridge-nf-call-iptables")
	if err != nil {
		return finding{Check: "bridge-nf-call-iptables", OK: true, Detail: "br_netfilter not loaded"}
	}
	return finding{Check: "bridge-nf-call-iptables", OK: true, Detail: "net.bridge.bridge-nf-call-iptables=" + v + " (twill's rules allow bridged traffic either way)"}
}

// checkForwardPolicy reports a DROP policy on FORWARD without twill's jump.
func checkForwardPolicy() finding {
	out, err := exec.Command("iptables", "-w", "-S", "FORWARD").CombinedOutput()
	if err != nil {
		return finding{Check: "iptables FORWARD", OK: true, Detail: "iptables not available: " + strings.TrimSpace(string(out))}
	}
	s := string(out)
	drop := strings.Contains(s, "-P FORWARD DROP")
	jump := strings.Contains(s, "-j TWILL-FORWARD")
	f := finding{Check: "iptables FORWARD", OK: jump || !drop, Detail: fmt.Sprintf("policy DROP=%v, jump to TWILL-FORWARD=%v", drop, jump)}
	if !f.OK {
		f.Fix = "the FORWARD policy drops container traffic and twill's chain is not hooked in: restart twilld (it inserts -j TWILL-FORWARD) or accept forwarding for tw-* bridges and twill0"
	}
	return f
}

// checkPeers pings every peer's twill0 address through the tunnel, small
// and at the full MTU: a small reply only means an MTU black hole.
func checkPeers(ctx context.Context, st control.Status, p control.Peers) []finding {
	if len(p.Peers) == 0 {
		return []finding{{Check: "peers", OK: true, Detail: "no other hosts hold a lease"}}
	}
	var out []finding
	for _, peer := range p.Peers {
		sn, err := netip.ParsePrefix(peer.Subnet)
		if err != nil {
			continue
		}
		dst := sn.Addr() // the peer's twill0 holds its lease's first address
		name := fmt.Sprintf("peer %s (%s)", peer.Addr, peer.Subnet)
		small, err := echo(ctx, dst, 56)
		if err != nil {
			out = append(out, finding{Check: name, Detail: fmt.Sprintf("no answer from %s through the tunnel: %v", dst, err),
				Fix: fmt.Sprintf("is UDP port %d open between the hosts (firewall, security group)? is twilld running there? does the peer's TWILL_PUBLIC_IP (%s) reach it?", st.Port, peer.Addr)})
			continue
		}
		size := st.MTU - 28 // ICMP payload filling the tunnel MTU
		if _, err := echo(ctx, dst, size); err != nil {
			out = append(out, finding{Check: name, Detail: fmt.Sprintf("small pings pass (%v) but %d-byte packets do not: MTU black hole", small.Round(time.Microsecond), st.MTU),
				Fix: "the path between the hosts carries less than the underlay MTU: set TWILL_MTU to the path MTU minus 28 on every host"})
			continue
		}
		out = append(out, finding{Check: name, OK: true, Detail: fmt.Sprintf("reached %s through the tunnel in %v, full MTU %d passes", dst, small.Round(time.Microsecond), st.MTU)})
	}
	return out
}

// echo sends one ICMP echo with size payload bytes and the DF bit to dst and
// waits up to 2 s for the reply.
func echo(ctx context.Context, dst netip.Addr, size int) (time.Duration, error) {
	pc, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return 0, fmt.Errorf("icmp socket (needs root): %w", err)
	}
	conn := pc.(*net.IPConn)
	defer conn.Close()
	// IP_PMTUDISC_DO: never fragment, so an oversized probe fails visibly.
	if raw, err := conn.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { setDontFragment(int(fd)) })
	}
	id := os.Getpid() & 0xffff
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: make([]byte, size)}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, err
	}
	deadline := start.Add(2 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetReadDeadline(deadline)
	buf := make([]byte, 65536)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return 0, errors.New("timed out")
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && from.String() == dst.String() {
			return time.Since(start), nil
		}
	}
}

// checkClock compares this host's clock with etcd's HTTP Date header: lease
// expiry is computed by etcd, but operators read times in local time.
func checkClock(ctx context.Context, st control.Status) finding {
	ep := strings.Fields(strings.Split(st.Etcd, ",")[0])
	if len(ep) == 0 || !strings.HasPrefix(ep[0], "http://") {
		return finding{Check: "clock", OK: true, Detail: "not checked (etcd over TLS or unknown)"}
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ep[0]+"/version", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return finding{Check: "clock", OK: true, Detail: "not checked: " + err.Error()}
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	theirs, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return finding{Check: "clock", OK: true, Detail: "not checked: etcd sent no Date"}
	}
	skew := time.Since(theirs).Round(time.Second)
	f := finding{Check: "clock", OK: skew < 5*time.Second && skew > -5*time.Second, Detail: fmt.Sprintf("skew to etcd %v", skew)}
	if !f.OK {
		f.Fix = "run NTP (chrony, systemd-timesyncd) on every host; lease expiry shown by twillctl is off by the skew"
	}
	return f
}
