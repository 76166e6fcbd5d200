package main

import (
	"fmt"

	"github.com/twill-net/twill/datapath/kernel"
	"github.com/twill-net/twill/datapath/overlay"
)

// startKernelPath attaches the kernel datapath beside the TUN path when
// TWILL_DATAPATH asks for it and the host allows it, and records which path
// runs and why. twill0 must exist (overlay.Open made it).
func (n *node) startKernelPath() error {
	switch n.cfg.Datapath {
	case "tun":
		n.pathWhy = "TWILL_DATAPATH=tun"
		return nil
	case "auto":
		if why := kernel.Unsuitable(n.under.Name); why != "" {
			n.pathWhy = why
			n.log.Warn("kernel datapath not used; forwarding through twill0 (TUN path)", "reason", why)
			return nil
		}
	case "kernel":
		if why := kernel.Unsuitable(n.under.Name); why != "" {
			n.log.Warn("kernel datapath asked for (TWILL_DATAPATH=kernel) although it may not suit this host", "reason", why)
		}
	}
	k, err := kernel.Open(kernel.Config{TUN: "twill0", Underlay: n.under.Name, LocalIP: n.under.Addr, Port: n.cfg.Port, MTU: n.mtu, Logger: n.log})
	if err != nil {
		if n.cfg.Datapath == "kernel" {
			return fmt.Errorf("%w (TWILL_DATAPATH=kernel needs Linux %s+ and CAP_BPF with CAP_NET_ADMIN, or CAP_SYS_ADMIN; TWILL_DATAPATH=auto falls back to the TUN path)", err, kernel.MinKernel)
		}
		n.pathWhy = err.Error()
		n.log.Warn("kernel datapath unavailable; forwarding through twill0 (TUN path)", "reason", err)
		return nil
	}
	n.kdp = k
	n.log.Info("kernel datapath attached", "tun", "twill0", "underlay", n.under.Name)
	return nil
}

// datapath names the path that runs, with the reason when it is the TUN path.
func (n *node) datapath() string {
	if n.kdp != nil {
		return "kernel (eBPF on twill0 and " + n.under.Name + "; the TUN path takes what the programs leave)"
	}
	return "tun (" + n.pathWhy + ")"
}

// inKernel applies a peer table change to the kernel datapath too, when it
// runs. A failure is logged: the programs then leave that peer's packets
// to the TUN path, or refuse them.
func (n *node) inKernel(what string, f func(*kernel.Datapath) error) {
	if n.kdp == nil {
		return
	}
	if err := f(n.kdp); err != nil {
		n.log.Error("kernel datapath: "+what, "err", err)
	}
}

// stats are the TUN path's counters plus the kernel datapath's, so peers,
// totals and drops mean the same whichever path moved a packet.
func (n *node) stats() overlay.Stats {
	st := n.fwd.Stats()
	if n.kdp == nil {
		return st
	}
	ks, err := n.kdp.Stats()
	if err != nil {
		n.log.Warn("reading the kernel datapath's counters", "err", err)
		return st
	}
	for k, v := range ks.Drops {
		st.Drops[k] += v
	}
	for i := range st.Peers {
		p, ok := ks.Peers[st.Peers[i].Subnet]
		if !ok {
			continue
		}
		x := &st.Peers[i]
		x.PacketsIn += p.PacketsIn
		x.BytesIn += p.BytesIn
		x.PacketsOut += p.PacketsOut
		x.BytesOut += p.BytesOut
		st.PacketsIn += p.PacketsIn
		st.BytesIn += p.BytesIn
		st.PacketsOut += p.PacketsOut
		st.BytesOut += p.BytesOut
		if p.LastSeen.After(x.LastSeen) {
			x.LastSeen = p.LastSeen
		}
	}
	return st
}
