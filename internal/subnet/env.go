package subnet

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// Env is the content of flannel's subnet.env, which tools built for flannel
// read (docker --bip, the flannel CNI plugin).
type Env struct {
	Network netip.Prefix // FLANNEL_NETWORK, the overlay
	Subnet  netip.Prefix // this host's subnet; written as its first address, e.g. 10.244.20.1/24
	MTU     int          // FLANNEL_MTU
	IPMasq  bool         // FLANNEL_IPMASQ
}

// Bytes renders e exactly as flanneld writes it.
func (e Env) Bytes() []byte {
	gw := netip.PrefixFrom(e.Subnet.Masked().Addr().Next(), e.Subnet.Bits())
	return fmt.Appendf(nil, "FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=%t\n",
		e.Network, gw, e.MTU, e.IPMasq)
}

// WriteEnv writes e to path atomically: a reader sees the old file or the new
// one, never a part. The directory is created if missing; the file is 0644
// like flanneld's.
func WriteEnv(path string, e Env) error {
	if !e.Network.IsValid() || !e.Subnet.IsValid() {
		return fmt.Errorf("writing %s: network %v and subnet %v must both be set", path, e.Network, e.Subnet)
	}
	return writeFileAtomic(path, e.Bytes(), 0o644)
}

// writeFileAtomic writes data to a temporary file beside path, syncs it and
// renames it over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming %s to %s: %w", tmp, path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename durable; best effort
		d.Close()
	}
	return nil
}
