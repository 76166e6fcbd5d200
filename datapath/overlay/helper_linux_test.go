package overlay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/twill-net/twill/datapath/kernel"
	"github.com/twill-net/twill/datapath/wireguard"
)

// The root tests and the benchmark harness re-exec this test binary inside
// network namespaces (ip netns exec) as small helper processes, selected by
// TWO_HELPER. A forwarder then runs as its own process, so its CPU time is
// measured honestly and no goroutine of the test ever switches namespace.

// helperFwdConfig configures the "forwarder" helper.
type helperFwdConfig struct {
	MTU     int
	Public  string
	Offload string
	Busy    time.Duration // Config.BusyPoll
	Overlay string
	Local   string
	Peers   map[string]string // subnet -> addr:port
	Ready   string            // file written once forwarding
	Stats   string            // file the final Stats are written to (JSON)
	// WGKey, when set, runs an encrypted overlay instead (datapath/wireguard,
	// as twilld does): this private key, WGPeers subnet -> public key.
	WGKey   string
	WGPeers map[string]string
	Kernel  bool // also attach the kernel datapath (datapath/kernel) on twill0 and ul0
	// BPFFS, with Kernel: a bpf filesystem to pin the kernel datapath's
	// links in (kernel.PinDir), with Hold; twill0 then outlives the process
	// until it stops with SIGTERM.
	BPFFS string
	Hold  time.Duration
	NoGRO bool // with Kernel: no GRO stage (kernel.Config.GRO)
}

// helperStats is what the forwarder helper writes when it stops: the TUN
// path's Stats and, with Kernel, the kernel datapath's.
type helperStats struct {
	Stats
	Kernel *kernel.Stats
}

func helperMain() bool {
	var err error
	switch os.Getenv("TWO_HELPER") {
	case "":
		return false
	case "forwarder":
		err = helperForwarder()
	case "sink":
		err = helperSink(os.Getenv("TWO_LISTEN"), os.Getenv("TWO_OUT"))
	case "source":
		err = helperSource(os.Getenv("TWO_DIAL"), os.Getenv("TWO_BYTES"), os.Getenv("TWO_OUT"))
	case "udpsink":
		err = helperUDPSink(os.Getenv("TWO_LISTEN"), os.Getenv("TWO_OUT"))
	case "udpoptions":
		err = helperUDPOptions(os.Getenv("TWO_TO"))
	case "udpsend":
		err = helperUDPSend(os.Getenv("TWO_FROM"), os.Getenv("TWO_TO"), os.Getenv("TWO_PACKETS"))
	default:
		err = fmt.Errorf("unknown helper %q", os.Getenv("TWO_HELPER"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

func helperForwarder() error {
	var c helperFwdConfig
	if err := json.Unmarshal([]byte(os.Getenv("TWO_FWD_CONFIG")), &c); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if c.WGKey != "" {
		return helperWireGuard(c, log)
	}
	f, err := Open(Config{MTU: c.MTU, PublicIP: netip.MustParseAddr(c.Public), Offload: c.Offload, BusyPoll: c.Busy, Logger: log})
	if err != nil {
		return err
	}
	if err := f.AddOverlay(netip.MustParsePrefix(c.Overlay), netip.MustParsePrefix(c.Local)); err != nil {
		f.Close()
		return err
	}
	var kdp *kernel.Datapath
	if c.Kernel {
		var pins string
		if c.BPFFS != "" {
			if pins, err = kernel.PinDir(c.BPFFS); err != nil {
				f.Close()
				return err
			}
		}
		gro := "twogro"
		if c.NoGRO {
			gro = ""
		}
		kdp, err = kernel.Open(kernel.Config{TUN: "twill0", Underlay: "ul0", LocalIP: netip.MustParseAddr(c.Public), Port: 8285, MTU: c.MTU, PinDir: pins, Hold: c.Hold, GRO: gro, Logger: log})
		if err == nil {
			err = kdp.AddOverlay(netip.MustParsePrefix(c.Overlay), netip.MustParsePrefix(c.Local))
		}
		if err != nil {
			f.Close()
			return err
		}
	}
	for s, a := range c.Peers {
		err := f.SetPeer(netip.MustParsePrefix(s), netip.MustParseAddrPort(a))
		if err == nil && kdp != nil {
			err = kdp.SetPeer(netip.MustParsePrefix(s), netip.MustParseAddrPort(a))
		}
		if err != nil {
			f.Close()
			return err
		}
	}
	if kdp != nil {
		err := kdp.Attach()
		if err == nil {
			err = f.Persist(kdp.Pinned())
		}
		if err != nil {
			kdp.Close()
			f.Close()
			return err
		}
	}
	sig, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// On SIGTERM the kernel datapath goes first, with its counters, and
	// twill0 with the forwarder (as twilld does when no container is left).
	ctx, cancel := context.WithCancel(context.Background())
	var hs helperStats
	var kerr error
	go func() {
		<-sig.Done()
		if kdp != nil {
			var ks kernel.Stats
			if ks, kerr = kdp.Stats(); kerr == nil {
				hs.Kernel = &ks
			}
			kdp.Close()
			f.Persist(false)
		}
		cancel()
	}()
	path := f.Path()
	if kdp != nil {
		path = "kernel+" + path
	}
	if err := os.WriteFile(c.Ready, []byte(path), 0o644); err != nil {
		f.Close()
		return err
	}
	if p := os.Getenv("TWO_CPUPROFILE"); p != "" {
		// Profiling the forwarder process itself, for datapath work.
		pf, err := os.Create(fmt.Sprintf("%s.%s", p, c.Public))
		if err == nil && pprof.StartCPUProfile(pf) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	runErr := f.Run(ctx)
	hs.Stats = f.Stats()
	if kerr != nil {
		return kerr
	}
	b, err := json.MarshalIndent(hs, "", " ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.Stats, b, 0o644); err != nil {
		return err
	}
	return runErr
}

// helperWireGuard runs one host of an encrypted overlay until SIGTERM. Its
// Stats are empty: WireGuard counts per peer (twillctl peers).
func helperWireGuard(c helperFwdConfig, log *slog.Logger) error {
	key, err := wireguard.ParseKey(c.WGKey)
	if err != nil {
		return err
	}
	d, err := wireguard.Open(wireguard.Config{Overlay: netip.MustParsePrefix(c.Overlay), Local: netip.MustParsePrefix(c.Local),
		PrivateKey: key, Logger: log, CopyingIO: os.Getenv("TWO_WG_COPYING") != ""}, c.MTU)
	if err != nil {
		return err
	}
	defer d.Close()
	for s, a := range c.Peers {
		pub, err := wireguard.ParseKey(c.WGPeers[s])
		if err != nil {
			return err
		}
		ep := netip.MustParseAddrPort(a)
		if err := d.SetPeer(wireguard.Peer{Subnet: netip.MustParsePrefix(s), PublicKey: pub, Endpoint: netip.AddrPortFrom(ep.Addr(), wireguard.DefaultListenPort)}); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := os.WriteFile(c.Ready, []byte("wireguard"), 0o644); err != nil {
		return err
	}
	if p := os.Getenv("TWO_CPUPROFILE"); p != "" {
		pf, err := os.Create(fmt.Sprintf("%s.%s", p, c.Public))
		if err == nil && pprof.StartCPUProfile(pf) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	<-ctx.Done()
	return os.WriteFile(c.Stats, []byte("{}"), 0o644)
}

// helperSink accepts one TCP connection, reads it to the end and writes
// "<bytes> <sha256>" to out.
func helperSink(listen, out string) error {
	l, err := net.Listen("tcp4", listen)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := os.WriteFile(out+".ready", nil, 0o644); err != nil {
		return err
	}
	c, err := l.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return err
	}
	return os.WriteFile(out, fmt.Appendf(nil, "%d %s", n, hex.EncodeToString(h.Sum(nil))), 0o644)
}

// helperSource sends n pseudo-random bytes to dial and writes "<bytes> <sha256>" to out.
func helperSource(dial, n, out string) error {
	total, err := strconv.Atoi(n)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp4", dial, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	h := sha256.New()
	buf := make([]byte, 256<<10)
	x := uint64(time.Now().UnixNano()) | 1
	for sent := 0; sent < total; {
		k := min(len(buf), total-sent)
		for i := 0; i+8 <= k; i += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			buf[i], buf[i+1], buf[i+2], buf[i+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
			buf[i+4], buf[i+5], buf[i+6], buf[i+7] = byte(x>>32), byte(x>>40), byte(x>>48), byte(x>>56)
		}
		if _, err := c.Write(buf[:k]); err != nil {
			return err
		}
		h.Write(buf[:k])
		sent += k
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	io.Copy(io.Discard, c) // wait for the sink to finish reading
	return os.WriteFile(out, fmt.Appendf(nil, "%d %s", total, hex.EncodeToString(h.Sum(nil))), 0o644)
}

// helperUDPSink appends one line per datagram it receives on listen to out.
func helperUDPSink(listen, out string) error {
	pc, err := net.ListenPacket("udp4", listen)
	if err != nil {
		return err
	}
	defer pc.Close()
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := os.WriteFile(out+".ready", nil, 0o644); err != nil {
		return err
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		fmt.Fprintf(f, "%s %q\n", from, buf[:n])
	}
}

// helperUDPOptions sends one datagram "with options" to to, its IPv4
// header carrying options (four NOPs).
func helperUDPOptions(to string) error {
	c, err := net.Dial("udp4", to)
	if err != nil {
		return err
	}
	defer c.Close()
	rc, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptString(int(fd), syscall.IPPROTO_IP, syscall.IP_OPTIONS, "\x01\x01\x01\x01")
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting IP_OPTIONS: %w", serr)
	}
	_, err = c.Write([]byte("with options"))
	return err
}

// helperUDPSend sends each hex-encoded packet of packets (JSON list) as
// one datagram from from (ip:port, port 0 for any) to to.
func helperUDPSend(from, to, packets string) error {
	var list []string
	if err := json.Unmarshal([]byte(packets), &list); err != nil {
		return err
	}
	laddr, err := net.ResolveUDPAddr("udp4", from)
	if err != nil {
		return err
	}
	raddr, err := net.ResolveUDPAddr("udp4", to)
	if err != nil {
		return err
	}
	c, err := net.DialUDP("udp4", laddr, raddr)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, p := range list {
		b, err := hex.DecodeString(p)
		if err != nil {
			return err
		}
		if _, err := c.Write(b); err != nil {
			return err
		}
	}
	return nil
}
