// Command twillctl shows what the local twilld is doing: this host's lease,
// every host's lease, peers and their counters, Docker networks and endpoints,
// and the names the resolver answers.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/internal/subnet"
)

const usage = `usage: twillctl [flags] COMMAND [flags]

flags (before or after the command):
  --socket PATH          twilld's control socket (env TWILL_CONTROL_SOCKET,
                         default <TWILL_STATE_DIR>/twill-ctl.sock, /var/lib/twill)
  --json                 print JSON instead of a table
  --etcd-endpoints URLS  etcd for ` + "`leases`" + ` when no twilld answers here (env ETCD_ENDPOINTS)
  --etcd-prefix PREFIX   etcd key prefix (env ETCD_PREFIX, default /coreos.com/network)

commands:
  status      this host: subnets, lease expiry, etcd health, MTU, offloads, uptime
  leases      every host's subnet, public IP and expiry (flanneld hosts marked);
              with no twilld here, read from etcd (--etcd-endpoints or ETCD_ENDPOINTS)
  peers       per peer: packets and bytes in and out, last seen; drops by reason
  networks    twill's Docker networks on this host
  endpoints   twill's container interfaces on this host
  names       names across hosts: every container name and alias on twill
              networks, its address, the host that published it, its network
  doctor      check this host: forwarding, rp_filter, routes, firewall, etcd,
              every peer through the tunnel (small and full-MTU), clock
  leave       give this host's leases back (decommissioning)
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("twillctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	def := os.Getenv("TWILL_CONTROL_SOCKET")
	if def == "" {
		dir := os.Getenv("TWILL_STATE_DIR")
		if dir == "" {
			dir = "/var/lib/twill"
		}
		def = filepath.Join(dir, "twill-ctl.sock")
	}
	sock := fs.String("socket", def, "twilld's control socket (env TWILL_CONTROL_SOCKET)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	envOr := func(k, d string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return d
	}
	endpoints := fs.String("etcd-endpoints", os.Getenv("ETCD_ENDPOINTS"), "etcd URLs for `leases` when no twilld answers here (env ETCD_ENDPOINTS)")
	prefix := fs.String("etcd-prefix", envOr("ETCD_PREFIX", "/coreos.com/network"), "etcd key prefix (env ETCD_PREFIX)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		if len(pos) > 1 {
			fmt.Fprintf(stderr, "twillctl: one command expected, got %q\n", pos)
		}
		fs.Usage()
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c := control.NewClient(*sock)
	cmd := pos[0]
	var eps []string
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	fallback := subnet.DialConfig{Endpoints: eps, CAFile: os.Getenv("ETCD_CAFILE"), CertFile: os.Getenv("ETCD_CERTFILE"), KeyFile: os.Getenv("ETCD_KEYFILE")}
	if err := command(ctx, c, cmd, *asJSON, stdout, fallback, *prefix); err != nil {
		fmt.Fprintf(stderr, "twillctl %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

var (
	errUnknown  = errors.New("unknown command (see twillctl -h)")
	errProblems = errors.New("problems found (see FIX above)")
)

func command(ctx context.Context, c *control.Client, cmd string, asJSON bool, w io.Writer, etcd subnet.DialConfig, prefix string) error {
	var v any
	var table func(io.Writer, any)
	switch cmd {
	case "status":
		v, table = &control.Status{}, func(w io.Writer, v any) { printStatus(w, v.(*control.Status)) }
	case "leases":
		v, table = &[]control.Lease{}, func(w io.Writer, v any) { printLeases(w, *v.(*[]control.Lease)) }
	case "peers":
		v, table = &control.Peers{}, func(w io.Writer, v any) { printPeers(w, v.(*control.Peers)) }
	case "networks":
		v, table = &[]control.Network{}, func(w io.Writer, v any) { printNetworks(w, *v.(*[]control.Network)) }
	case "endpoints":
		v, table = &[]control.Endpoint{}, func(w io.Writer, v any) { printEndpoints(w, *v.(*[]control.Endpoint)) }
	case "names":
		v, table = &[]control.Name{}, func(w io.Writer, v any) { printNames(w, *v.(*[]control.Name)) }
	case "doctor":
		fs := doctor(ctx, c)
		if asJSON {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			if err := enc.Encode(fs); err != nil {
				return err
			}
		} else {
			printFindings(w, fs)
		}
		// Scripts read the exit status: a problem fails either form.
		for _, f := range fs {
			if !f.OK {
				return errProblems
			}
		}
		return nil
	case "leave":
		if err := c.Leave(ctx); err != nil {
			return err
		}
		if asJSON {
			fmt.Fprintln(w, `{"result":"left"}`)
		} else {
			fmt.Fprintln(w, "left: this host's leases are revoked; stop twilld (or disable the plugin) before it takes a new one")
		}
		return nil
	default:
		return fmt.Errorf("%q: %w", cmd, errUnknown)
	}
	if err := c.Get(ctx, cmd, v); err != nil {
		if cmd != "leases" || len(etcd.Endpoints) == 0 || !errors.Is(err, control.ErrNoDaemon) {
			return err
		}
		// No twilld here: read the cluster's leases from etcd itself.
		ls, eerr := etcdLeases(ctx, etcd, prefix)
		if eerr != nil {
			return fmt.Errorf("%w; reading etcd instead: %w", err, eerr)
		}
		*v.(*[]control.Lease) = ls
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	table(w, v)
	return nil
}
