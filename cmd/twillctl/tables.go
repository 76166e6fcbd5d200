package main

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/twill-net/twill/internal/control"
)

func newTab(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func printStatus(w io.Writer, s *control.Status) {
	t := newTab(w)
	fmt.Fprintf(t, "host\t%s\n", s.Hostname)
	fmt.Fprintf(t, "public ip\t%s:%d (underlay %s)\n", s.PublicIP, s.Port, s.Underlay)
	fmt.Fprintf(t, "mtu\t%d\n", s.MTU)
	fmt.Fprintf(t, "datapath\t%s\n", s.Datapath)
	fmt.Fprintf(t, "offload\t%s\n", s.Offload)
	fmt.Fprintf(t, "busy poll\t%s\n", s.BusyPoll)
	health := "healthy"
	if !s.EtcdHealthy {
		health = "UNREACHABLE: " + s.EtcdError
	}
	fmt.Fprintf(t, "etcd\t%s (%s)\n", s.Etcd, health)
	fmt.Fprintf(t, "uptime\t%s\n", (time.Duration(s.UptimeSecond) * time.Second).String())
	for _, o := range s.Overlays {
		def := ""
		if o.Default {
			def = " (default)"
		}
		fmt.Fprintf(t, "overlay %s%s\tsubnet %s, lease expires in %s\n", o.Network, def, o.Subnet, until(o.Expiry))
		if o.Resolver != "" || o.ResolverState != "" {
			addr := o.Resolver
			if addr == "" {
				addr = "-"
			}
			fmt.Fprintf(t, "  resolver (dns:)\t%s (%s)\n", addr, o.ResolverState)
		}
		if o.Encrypted != "" {
			fmt.Fprintf(t, "\tencrypted: %s\n", o.Encrypted)
		}
	}
	t.Flush()
}

func until(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Until(t).Round(time.Minute).String()
}

func printLeases(w io.Writer, ls []control.Lease) {
	sort.Slice(ls, func(i, j int) bool {
		if c := comparePrefix(ls[i].Network, ls[j].Network); c != 0 {
			return c < 0
		}
		return comparePrefix(ls[i].Subnet, ls[j].Subnet) < 0
	})
	t := newTab(w)
	fmt.Fprintln(t, "NETWORK\tSUBNET\tPUBLIC IP\tBACKEND\tEXPIRES IN\tHOST")
	for _, l := range ls {
		host := "twill"
		if l.Flanneld {
			host = "flanneld"
		}
		if l.Self {
			host += " (this host)"
		}
		be := l.BackendType
		if be == "" {
			be = "udp"
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Network, l.Subnet, l.PublicIP, be, until(l.Expiry), host)
	}
	t.Flush()
}

func printPeers(w io.Writer, p *control.Peers) {
	t := newTab(w)
	fmt.Fprintln(t, "SUBNET\tPEER\tPKTS IN\tPKTS OUT\tBYTES IN\tBYTES OUT\tLAST SEEN\tHANDSHAKE")
	ago := func(at time.Time) string {
		if at.IsZero() {
			return "never"
		}
		return time.Since(at).Round(time.Second).String() + " ago"
	}
	for _, x := range p.Peers {
		if x.Encrypted { // WireGuard counts bytes only; its handshake says the peer is alive
			fmt.Fprintf(t, "%s\t%s\t-\t-\t%d\t%d\t-\t%s\n", x.Subnet, x.Addr, x.BytesIn, x.BytesOut, ago(x.LastHandshake))
			continue
		}
		fmt.Fprintf(t, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t-\n", x.Subnet, x.Addr, x.PacketsIn, x.PacketsOut, x.BytesIn, x.BytesOut, ago(x.LastSeen))
	}
	t.Flush()
	if len(p.Drops) > 0 {
		keys := make([]string, 0, len(p.Drops))
		for k := range p.Drops {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%d", k, p.Drops[k])
		}
		fmt.Fprintf(w, "drops: %s\n", strings.Join(parts, " "))
	}
}

func printNetworks(w io.Writer, ns []control.Network) {
	t := newTab(w)
	fmt.Fprintln(t, "NETWORK ID\tBRIDGE\tOVERLAY\tSUBNET\tGATEWAY\tMTU\tINTERNAL\tENDPOINTS")
	for _, n := range ns {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%d\t%v\t%d\n", short(n.ID), n.Bridge, n.Overlay, n.Subnet, n.Gateway, n.MTU, n.Internal, n.Endpoints)
	}
	t.Flush()
}

func printEndpoints(w io.Writer, es []control.Endpoint) {
	t := newTab(w)
	fmt.Fprintln(t, "ENDPOINT ID\tNETWORK ID\tADDRESS\tMAC\tVETH\tPORTS")
	for _, e := range es {
		ports := strings.Join(e.Ports, ", ")
		if ports == "" {
			ports = "-"
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\n", short(e.ID), short(e.Network), e.Address, e.MAC, e.Veth, ports)
	}
	t.Flush()
}

func printNames(w io.Writer, ns []control.Name) {
	sort.Slice(ns, func(i, j int) bool {
		a, b := ns[i], ns[j]
		if a.Network != b.Network {
			return a.Network < b.Network
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return comparePrefix(a.Address+"/32", b.Address+"/32") < 0
	})
	t := newTab(w)
	fmt.Fprintln(t, "NAME\tADDRESS\tHOST\tNETWORK\tCONTAINER")
	for _, n := range ns {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Address, n.Host, n.Network, short(n.Container))
	}
	t.Flush()
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func printFindings(w io.Writer, fs []finding) {
	for _, f := range fs {
		mark := "ok  "
		if !f.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "%s  %-24s %s\n", mark, f.Check, f.Detail)
		if f.Fix != "" {
			fmt.Fprintf(w, "      %-24s FIX: %s\n", "", f.Fix)
		}
	}
}

// comparePrefix orders prefixes by address (10.96.7.0 before 10.96.12.0),
// falling back to text for anything unparsable.
func comparePrefix(a, b string) int {
	pa, ea := netip.ParsePrefix(a)
	pb, eb := netip.ParsePrefix(b)
	if ea != nil || eb != nil {
		return strings.Compare(a, b)
	}
	return pa.Addr().Compare(pb.Addr())
}
