package overlay

import "time"

// Receive batch sizes: with UDP GRO each buffer can hold a 64 KB train.
const (
	groBatch   = 32
	plainBatch = 64
)

// inbound moves datagrams from the UDP socket to the TUN. All buffers are
// allocated once; handle allocates nothing.
type inbound struct {
	rd     reader // the socket
	f      *Forwarder
	out    *outbound // polled after writes (outbound.poll)
	wrote  bool      // this batch wrote to the TUN
	vnet   bool
	mtu    int
	msgs   []Message
	bufs   [][]byte // one receive buffer per message, referenced by msgs
	co     *coalescer
	single plainFrame
	now    int64
}

func newInbound(f *Forwarder, out *outbound) *inbound {
	in := &inbound{f: f, out: out, vnet: f.tun.VnetHdr(), mtu: f.cfg.MTU}
	in.single.vnet = in.vnet
	batch, size := plainBatch, f.cfg.MTU+1 // one spare byte reveals oversize datagrams
	if f.conn.GRO() {
		batch, size = groBatch, maxIPPacket
	}
	in.msgs = make([]Message, batch)
	in.bufs = make([][]byte, batch)
	for i := range in.msgs {
		b := make([]byte, size)
		in.bufs[i] = b
		in.msgs[i].Buffers = in.bufs[i : i+1]
	}
	in.co = newCoalescer(in.write)
	in.rd.wait, in.rd.step = f.conn.WaitRead, in.step
	return in
}

// step delivers one batch of queued datagrams, if any (reader.step).
func (in *inbound) step() (bool, error) {
	k, err := in.f.conn.TryReadBatch(in.msgs)
	if err != nil || k == 0 {
		return false, err
	}
	in.f.ctr.udpRecvs.Add(1)
	in.handle(in.msgs[:k])
	return true, nil
}

// handle checks and delivers one received batch.
func (in *inbound) handle(msgs []Message) {
	t := in.f.tab.Load()
	in.now = time.Now().UnixNano()
	for i := range msgs {
		m := &msgs[i]
		b := m.Buffers[0][:m.N]
		ip := m.Addr.Addr()
		if !ip.Is4() {
			in.f.ctr.drop(reasonUnknownPeer, 1)
			continue
		}
		sender := addrU32(ip)
		seg := m.Segment
		if seg <= 0 || seg > len(b) {
			seg = len(b)
		}
		for off := 0; off < len(b); off += seg {
			in.packet(t, sender, b[off:min(off+seg, len(b))])
		}
	}
	in.co.flush()
	if in.wrote {
		in.wrote = false
		in.out.poll()
	}
}

// packet checks one datagram from sender and delivers or drops it.
func (in *inbound) packet(t *table, sender uint32, d []byte) {
	if len(d) > in.mtu {
		in.f.ctr.drop(reasonOversize, 1)
		return
	}
	if _, r := ipv4Header(d, true); r != reasonNone {
		in.f.ctr.drop(r, 1)
		return
	}
	p, r := t.inbound(sender, ipv4Src(d), ipv4Dst(d))
	if r != reasonNone {
		in.f.ctr.drop(r, 1)
		return
	}
	p.c.packetsIn.Add(1)
	p.c.bytesIn.Add(uint64(len(d)))
	p.c.lastSeen.Store(in.now)
	in.f.ctr.packetsIn.Add(1)
	in.f.ctr.bytesIn.Add(uint64(len(d)))
	if in.vnet {
		if in.co.add(d) {
			return
		}
		in.co.flush()
	}
	in.write(in.single.of(d))
}

// write writes one packet (possibly a coalesced super-packet) to the TUN.
func (in *inbound) write(bufs [][]byte) {
	in.f.ctr.tunWrites.Add(1)
	in.wrote = true
	if err := in.f.writeTUN(bufs); err != nil {
		n := uint64(1)
		if len(bufs) > 2 {
			n = uint64(len(bufs) - 1)
		}
		in.f.ctr.drop(reasonTUNWriteError, n)
	}
}
