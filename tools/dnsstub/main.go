// Command dnsstub is the testbed's stand-in for the internet's resolvers and
// a small DNS client: `dnsstub serve` answers a fixed zone on UDP and TCP
// (the upstream twill forwards to in the e2e and the load test, run in its
// own namespace on the underlay, never the machine's resolvers), and
// `dnsstub query` asks one question over UDP or TCP and prints the answer.
//
//	dnsstub serve -listen 10.199.0.252:53 -zone twe.
//	dnsstub query -server 10.96.0.53:53 [-tcp] [-type A] NAME
//
// The zone answers: `www.<zone>` A 198.51.100.80; `big.<zone>` 60 A
// records (over 512 bytes: truncated over plain UDP); `<anything>.<zone>`
// A 198.51.100.1; names outside the zone NXDOMAIN.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/twill-net/twill/internal/udpsock"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dnsstub serve|query [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "query":
		err = query(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: want serve or query", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsstub:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:5353", "address to answer on (UDP and TCP)")
	zone := fs.String("zone", "twe.", "the zone answered")
	fs.Parse(args)
	z := dns.Fqdn(strings.ToLower(*zone))
	// The stub stands in for resolvers on other machines: its garbage
	// collector (a few MB of heap, collected several times a second under
	// dnsperf) must not show up in twill's latency figures as stalls of
	// tens of milliseconds. Collect rarely; the heap stays small anyway.
	debug.SetGCPercent(2000)
	errs := make(chan error, 3)
	// UDP: one socket, read in batches by one loop that answers in place,
	// with no goroutine or allocation per query beyond the library's
	// parsing: the stub stands in for resolvers on other machines, so it
	// should take as little of this one's CPU as it can.
	addr, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return err
	}
	us, err := udpsock.Listen(addr, 4<<20)
	if err != nil {
		return err
	}
	closers := []func() error{us.Close}
	go func() {
		var q dns.Msg
		out := make([]byte, dns.MaxMsgSize)
		us.Serve(32, dns.MaxMsgSize, func(b []byte, from netip.AddrPort) {
			if q.Unpack(b) != nil || q.Response {
				return // what does not parse as a DNS query gets no answer
			}
			if a, err := answer(&q, z, true).PackBuffer(out); err == nil {
				us.WriteToUDPAddrPort(a, from)
			}
		}, nil)
	}()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) { w.WriteMsg(answer(q, z, false)) })
	tcp := &dns.Server{Addr: *listen, Net: "tcp", Handler: h}
	go func() { errs <- tcp.ListenAndServe() }()
	closers = append(closers, tcp.Shutdown)
	fmt.Fprintf(os.Stderr, "dnsstub: answering zone %s on %s (udp, tcp)\n", z, *listen)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-errs:
		return err
	case <-sig:
		for _, c := range closers {
			c()
		}
		return nil
	}
}

var (
	wwwAddr   = net.IPv4(198, 51, 100, 80).To4()
	otherAddr = net.IPv4(198, 51, 100, 1).To4()
)

// answer is the zone's reply to q, truncated to what a UDP client accepts.
func answer(q *dns.Msg, z string, udp bool) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	m.RecursionAvailable = true
	if len(q.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	qn := strings.ToLower(q.Question[0].Name)
	switch {
	case !dns.IsSubDomain(z, qn):
		m.Rcode = dns.RcodeNameError
	case q.Question[0].Qtype != dns.TypeA:
	case qn == "www."+z:
		m.Answer = append(m.Answer, a(q.Question[0].Name, wwwAddr))
	case qn == "big."+z:
		for i := 1; i <= 60; i++ {
			m.Answer = append(m.Answer, a(q.Question[0].Name, net.IPv4(198, 51, 100, byte(100+i)).To4()))
		}
	default:
		m.Answer = append(m.Answer, a(q.Question[0].Name, otherAddr))
	}
	size := dns.MinMsgSize
	if o := q.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), false)
		size = max(int(o.UDPSize()), dns.MinMsgSize)
	}
	if udp {
		m.Truncate(size)
	}
	return m
}

func a(name string, ip net.IP) dns.RR {
	return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: ip}
}

func query(args []string) error {
	fs := flag.NewFlagSet("query", flag.ExitOnError)
	server := fs.String("server", "127.0.0.1:53", "resolver to ask, IP:PORT")
	tcp := fs.Bool("tcp", false, "ask over TCP")
	qtype := fs.String("type", "A", "query type")
	edns := fs.Int("edns", 0, "EDNS0 UDP size to offer; 0 = no EDNS0")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("query takes one NAME")
	}
	t, ok := dns.StringToType[strings.ToUpper(*qtype)]
	if !ok {
		return fmt.Errorf("unknown type %q", *qtype)
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(fs.Arg(0)), t)
	if *edns > 0 {
		q.SetEdns0(uint16(*edns), false)
	}
	c := &dns.Client{Net: "udp", Timeout: *timeout}
	if *tcp {
		c.Net = "tcp"
	}
	resp, _, err := c.Exchange(q, *server)
	if err != nil {
		return err
	}
	fmt.Printf("rcode %s tc %v answers %d\n", dns.RcodeToString[resp.Rcode], resp.Truncated, len(resp.Answer))
	for _, rr := range resp.Answer {
		if x, ok := rr.(*dns.A); ok {
			fmt.Println(x.A.String())
		}
	}
	return nil
}
