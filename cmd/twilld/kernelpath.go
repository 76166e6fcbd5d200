package main

import (
	"fmt"
	"net/netip"

	"github.com/twill-net/twill/datapath/kernel"
	"github.com/twill-net/twill/datapath/overlay"
)

// startKernelPath loads the kernel datapath beside the TUN path when
// TWILL_DATAPATH asks for it and the host allows it, and records which path
// runs and why. twill0 must exist (overlay.Open made it). attachKernelPath
// puts the programs on their hooks once the maps hold the lease table.
func (n *node) startKernelPath() error {
	n.pins = n.pinDir()
	switch n.cfg.Datapath {
	case "tun":
		n.pathWhy = "TWILL_DATAPATH=tun"
		n.dropKernelPath()
		return nil
	case "auto":
		if why := kernel.Unsuitable(n.under.Name); why != "" {
			n.pathWhy = why
			n.log.Warn("kernel datapath not used; forwarding through twill0 (TUN path)", "reason", why)
			n.dropKernelPath()
			return nil
		}
	case "kernel":
		if why := kernel.Unsuitable(n.under.Name); why != "" {
			n.log.Warn("kernel datapath asked for (TWILL_DATAPATH=kernel) although it may not suit this host", "reason", why)
		}
	}
	k, err := kernel.Open(kernel.Config{TUN: "twill0", Underlay: n.under.Name, LocalIP: n.under.Addr, Port: n.cfg.Port, MTU: n.mtu, PinDir: n.pins, GRO: groPair, Logger: n.log})
	if err != nil {
		return n.kernelPathFailed(err)
	}
	n.kdp = k
	return nil
}

// kernelPathFailed falls back to the TUN path, or fails when the kernel
// path was asked for.
func (n *node) kernelPathFailed(err error) error {
	if n.cfg.Datapath == "kernel" {
		return fmt.Errorf("%w (TWILL_DATAPATH=kernel needs Linux %s+ and CAP_BPF with CAP_NET_ADMIN, or CAP_SYS_ADMIN; TWILL_DATAPATH=auto falls back to the TUN path)", err, kernel.MinKernel)
	}
	n.pathWhy = err.Error()
	n.log.Warn("kernel datapath unavailable; forwarding through twill0 (TUN path)", "reason", err)
	n.dropKernelPath()
	return nil
}

// attachKernelPath writes every peer lease into the kernel datapath's maps
// and attaches its programs, taking over those a previous twilld left
// forwarding (so a restart loses no packet); twill0 then outlives twilld
// as long as they do.
func (n *node) attachKernelPath() error {
	if n.kdp == nil {
		return nil
	}
	own := map[netip.Prefix]bool{}
	for _, l := range n.leases.Leases() {
		own[l.Subnet] = true
	}
	for _, l := range n.leases.AllLeases() {
		if peer, ok := n.udpPeer(l); ok && !own[l.Subnet] {
			n.inKernel("adding peer", func(k *kernel.Datapath) error { return k.SetPeer(l.Subnet, peer) })
		}
	}
	if err := n.kdp.Attach(); err != nil {
		n.kdp.Close()
		n.kdp = nil
		return n.kernelPathFailed(err)
	}
	kept := n.kdp.Pinned()
	if err := n.fwd.Persist(kept); err != nil {
		n.log.Error("twill0 cannot outlive twilld; the kernel datapath stops with it", "err", err)
	}
	n.log.Info("kernel datapath attached", "tun", "twill0", "underlay", n.under.Name, "kept_across_restarts", kept)
	return nil
}

// pinDir is where the kernel datapath pins its links, or "" (pinWhy says
// why) when it cannot outlive twilld.
func (n *node) pinDir() string {
	if n.cfg.BPFFS == "" {
		n.pinWhy = "TWILL_BPF_FS is empty"
		return ""
	}
	dir, err := kernel.PinDir(n.cfg.BPFFS)
	if err != nil {
		n.pinWhy = err.Error()
		return ""
	}
	return dir
}

// groPair names the kernel datapath's GRO veth pair, twillgro0/twillgro1.
const groPair = "twillgro"

// dropKernelPath detaches programs a previous twilld left pinned and its
// GRO pair, for a twilld that runs the TUN path alone, and lets twill0 go
// with it.
func (n *node) dropKernelPath() {
	if err := kernel.Remove(n.pins, groPair); err != nil {
		n.log.Warn("removing the kernel datapath a previous twilld left attached", "err", err)
	}
	if err := n.fwd.Persist(false); err != nil {
		n.log.Warn("twill0", "err", err)
	}
}

// closeKernelPath ends the kernel datapath with twilld, or leaves it
// forwarding for the next twilld when containers here still use it (an
// upgrade, a plugin disabled with -f, dockerd stopped with live-restore).
func (n *node) closeKernelPath() {
	if n.kdp == nil {
		return
	}
	if n.kdp.Pinned() && n.drv != nil && len(n.drv.Endpoints()) > 0 {
		n.kdp.Release()
		n.log.Info("kernel datapath left attached for the next twilld: containers here keep reaching other hosts meanwhile", "for_at_most", kernel.DefaultHold)
		return
	}
	n.kdp.Close()
	n.fwd.Persist(false)
}

// datapath names the path that runs, with the reason when it is the TUN path.
func (n *node) datapath() string {
	if n.kdp != nil {
		kept := "kept attached across restarts"
		if !n.kdp.Pinned() {
			why := n.pinWhy
			if why == "" {
				why = "pinning failed (see the log)"
			}
			kept = "stops with twilld: " + why
		}
		return "kernel (eBPF on twill0 and " + n.under.Name + "; the TUN path takes what the programs leave; " + kept + ")"
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
