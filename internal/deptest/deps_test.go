package deptest

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/twill-net/twill/"

// deps lists every package pkg depends on, transitively (no tests).
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", module+pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	return strings.Fields(string(out))
}

func TestDependenciesPointOneWay(t *testing.T) {
	rules := []struct {
		pkg    string
		banned []string
	}{
		{"driver", []string{"github.com/vishvananda/netlink", "go.etcd.io/etcd", module + "datapath", module + "cmd", module + "plugin", module + "internal/subnet"}},
		{"ipam", []string{"github.com/vishvananda/netlink", "go.etcd.io/etcd", module + "datapath", module + "cmd", module + "plugin", module + "internal/subnet"}},
		{"datapath/overlay", []string{"go.etcd.io/etcd", "github.com/docker/go-plugins-helpers", module + "driver", module + "ipam", module + "plugin", module + "internal/subnet", module + "cmd"}},
		{"datapath/wireguard", []string{"go.etcd.io/etcd", "github.com/docker/go-plugins-helpers", module + "driver", module + "ipam", module + "plugin", module + "internal/subnet", module + "cmd"}},
		{"datapath/links", []string{"go.etcd.io/etcd", "github.com/docker/go-plugins-helpers", module + "driver", module + "ipam", module + "plugin", module + "internal/subnet"}},
		{"datapath/kernel", []string{"go.etcd.io/etcd", "github.com/docker/go-plugins-helpers", module + "driver", module + "ipam", module + "plugin", module + "internal/subnet", module + "cmd", module + "datapath/overlay"}},
		{"datapath/firewall", []string{"go.etcd.io/etcd", "github.com/docker/go-plugins-helpers", module + "driver", module + "ipam", module + "plugin", module + "internal/subnet"}},
		{"plugin", []string{"github.com/vishvananda/netlink", "go.etcd.io/etcd", module + "datapath", module + "internal/subnet", module + "cmd"}},
		// names: records, resolver and the Docker watcher; the address it
		// listens on is put on the host by the datapath, wired in cmd.
		{"names", []string{"github.com/vishvananda/netlink", module + "datapath", module + "driver", module + "ipam", module + "plugin", module + "internal/subnet", module + "cmd", "github.com/docker/go-plugins-helpers"}},
		// udpsock: sockets only; the resolver and the testbed's stub use it.
		{"internal/udpsock", []string{module + "names", module + "datapath", module + "driver", module + "ipam", module + "plugin", module + "internal/subnet", module + "cmd", "go.etcd.io/etcd", "github.com/miekg/dns"}},
		// csum: the Internet checksum, for both datapaths; it sees nothing else.
		{"internal/csum", []string{module + "datapath", module + "internal/subnet", module + "cmd", "golang.org/x", "github.com/vishvananda"}},
		// tundev: opening a TUN, for both datapaths.
		{"internal/tundev", []string{module + "datapath", module + "internal/subnet", module + "cmd", "github.com/vishvananda", "golang.zx2c4.com"}},
		{"internal/subnet", []string{module + "datapath", module + "driver", module + "ipam", module + "plugin", "github.com/docker/go-plugins-helpers"}},
	}
	for _, r := range rules {
		for _, d := range deps(t, r.pkg) {
			for _, b := range r.banned {
				if d == b || strings.HasPrefix(d, b+"/") || strings.HasPrefix(d, b) && strings.HasSuffix(b, "etcd") {
					t.Errorf("%s depends on %s", r.pkg, d)
				}
			}
		}
	}
}
