package kernel

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The GRO stage. A NIC hands the kernel one datagram per inner packet, and
// twill_decap redirects each into twill0 on its own: routing, the bridge,
// the container's veth and its TCP stack then work per 1448-byte segment,
// where kernel VXLAN merges a stream's segments after decapsulation (its
// gro_cells) and works per 64 KB. A redirect into twill0 never passes GRO,
// a veth's NAPI does: so twill_decap sends single segments out of one end
// of a veth pair whose other end has GRO on, and twill_gro, on that end's
// ingress, puts the merged super-packets into twill0.

// groPair returns the names of the pair's ends: decapsulated segments leave
// by the first and are merged on the second.
func groPair(prefix string) (tx, rx string) { return prefix + "0", prefix + "1" }

// ensureGRO makes (or finds, after a restart) the GRO veth pair, ready:
// TSO off on the sending end (a veth uses its peer's NAPI only for packets
// it would not have to segment), GRO on the receiving end (which turns its
// NAPI on), both up with mtu.
func ensureGRO(prefix string, mtu int) (tx, rx *netlink.LinkAttrs, err error) {
	txName, rxName := groPair(prefix)
	txLink, txErr := netlink.LinkByName(txName)
	_, rxErr := netlink.LinkByName(rxName)
	if txErr != nil || rxErr != nil || txLink.Type() != "veth" {
		// Missing, half there or not a veth: made anew.
		for _, name := range []string{txName, rxName} {
			if l, err := netlink.LinkByName(name); err == nil {
				netlink.LinkDel(l)
			}
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: txName, MTU: mtu}, PeerName: rxName}
		if err := netlink.LinkAdd(v); err != nil {
			return nil, nil, fmt.Errorf("creating veth pair %s/%s: %w", txName, rxName, err)
		}
	}
	var links [2]netlink.Link
	for i, name := range []string{txName, rxName} {
		if links[i], err = netlink.LinkByName(name); err != nil {
			return nil, nil, fmt.Errorf("GRO veth %s: %w", name, err)
		}
		if links[i].Attrs().MTU != mtu {
			if err := netlink.LinkSetMTU(links[i], mtu); err != nil {
				return nil, nil, fmt.Errorf("GRO veth %s: mtu %d: %w", name, mtu, err)
			}
		}
	}
	if err := ethtoolSet(txName, unix.ETHTOOL_STSO, false); err != nil {
		return nil, nil, fmt.Errorf("GRO veth %s: turning TSO off: %w", txName, err)
	}
	for _, l := range links {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, nil, fmt.Errorf("GRO veth %s: %w", l.Attrs().Name, err)
		}
	}
	// GRO last: a veth turns NAPI on only while it is up.
	if err := ethtoolSet(rxName, unix.ETHTOOL_SGRO, true); err != nil {
		return nil, nil, fmt.Errorf("GRO veth %s: turning GRO on: %w", rxName, err)
	}
	return links[0].Attrs(), links[1].Attrs(), nil
}

// removeGRO deletes the pair (deleting one end deletes both).
func removeGRO(prefix string) error {
	if prefix == "" {
		return nil
	}
	tx, _ := groPair(prefix)
	l, err := netlink.LinkByName(tx)
	if err != nil {
		return nil
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("deleting GRO veth %s: %w", tx, err)
	}
	return nil
}

// ethtoolSet sets one of the legacy ethtool feature flags (ETHTOOL_S*).
func ethtoolSet(dev string, cmd uint32, on bool) error {
	var v uint32
	if on {
		v = 1
	}
	_, err := ethtool(dev, cmd, v)
	return err
}
