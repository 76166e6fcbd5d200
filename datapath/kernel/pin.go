package kernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// bpfFSMagic is a bpf filesystem's statfs type (BPF_FS_MAGIC).
const bpfFSMagic = 0xcafe4a11

// PinDir returns this host's directory for the programs' links under root,
// a mounted bpf filesystem (usually /sys/fs/bpf): twill/net-<inode of this
// network namespace>, so hosts that are namespaces of one machine (a test
// bed) never take over each other's programs. It fails when root is not a
// bpf filesystem.
func PinDir(root string) (string, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(root, &fs); err != nil {
		return "", fmt.Errorf("bpf filesystem %s: %w", root, err)
	}
	if uint32(fs.Type) != bpfFSMagic {
		return "", fmt.Errorf("%s is not a bpf filesystem (mount -t bpf bpf %s on the host)", root, root)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return "", fmt.Errorf("this network namespace: %w", err)
	}
	return filepath.Join(root, "twill", fmt.Sprintf("net-%d", st.Ino)), nil
}

// Remove detaches programs a previous twilld left pinned in dir, and
// deletes its GRO veth pair (gro: Config.GRO), for a twilld that will not
// run the kernel datapath: they would otherwise go on forwarding beside its
// TUN path until their hold ran out.
func Remove(dir, gro string) error {
	errs := []error{removeGRO(gro)}
	if dir != "" {
		errs = append(errs, unpinAll(dir, nil))
		os.Remove(dir)
	}
	return errors.Join(errs...)
}

// unpinAll detaches every link pinned in dir but those named in keep.
func unpinAll(dir string, keep map[string]bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kernel datapath: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if keep[e.Name()] {
			continue
		}
		path := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("kernel datapath: pinned link %s: %w", path, err))
			continue
		}
		errs = append(errs, l.Unpin(), l.Close())
	}
	return errors.Join(errs...)
}

// heartbeat vouches for the maps every second until Close or Release.
func (d *Datapath) heartbeat() {
	defer close(d.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			if err := d.vouch(); err != nil {
				d.log.Warn("kernel datapath: vouching for the maps", "err", err)
			}
		}
	}
}

// vouch tells the programs to go on forwarding for Hold from now
// (CLOCK_MONOTONIC; the programs read its coarse variant, at most a tick
// behind).
func (d *Datapath) vouch() error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return err
	}
	until := uint64(ts.Nano()) + uint64(d.cfg.Hold)
	if err := d.objs.Alive.Put(uint32(0), until); err != nil {
		return fmt.Errorf("kernel datapath: alive: %w", err)
	}
	return nil
}
