package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/control"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// fakeSource is a daemon with fixed answers; exp is every lease's expiry.
type fakeSource struct {
	left bool
	exp  time.Time
}

func (f *fakeSource) Status(ctx context.Context) (control.Status, error) {
	return control.Status{Hostname: "node-a", PublicIP: "10.0.0.1", Port: 8285, Underlay: "eth0", MTU: 1472,
		Datapath: "kernel (eBPF on twill0 and eth0; the TUN path takes what the programs leave)", Offload: "offload", BusyPoll: "50ms, 12 spells", Etcd: "http://10.0.0.5:2379", EtcdHealthy: true, UptimeSecond: 3725,
		Overlays: []control.OverlayLease{{Network: "10.96.0.0/16", Subnet: "10.96.7.0/24", Default: true, Expiry: f.exp, Resolver: "10.96.0.53", ResolverState: "serving, 3 records"},
			{Network: "10.98.0.0/16", Subnet: "10.98.3.0/24", Expiry: f.exp,
				Encrypted: "wireguard on twg0a620000, UDP 51820, public key hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="}}}, nil
}

func (f *fakeSource) Leases(ctx context.Context) ([]control.Lease, error) {
	exp := f.exp
	return []control.Lease{
		{Network: "10.96.0.0/16", Subnet: "10.96.9.0/24", PublicIP: "10.0.0.2", Expiry: exp},
		{Network: "10.96.0.0/16", Subnet: "10.96.7.0/24", PublicIP: "10.0.0.1", Expiry: exp, Self: true},
		{Network: "10.96.0.0/16", Subnet: "10.96.12.0/24", PublicIP: "10.0.0.9", BackendType: "vxlan", Flanneld: true, Expiry: exp},
	}, nil
}

func (f *fakeSource) Peers(ctx context.Context) (control.Peers, error) {
	return control.Peers{Peers: []control.Peer{{Subnet: "10.96.9.0/24", Addr: "10.0.0.2:8285", PacketsIn: 10, PacketsOut: 12, BytesIn: 1000, BytesOut: 1200},
		{Subnet: "10.97.3.0/24", Addr: "10.0.0.3:51820", BytesIn: 2000, BytesOut: 2400, Encrypted: true,
			PublicKey: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=", LastHandshake: time.Now().Add(-42 * time.Second)}},
		Drops: map[string]uint64{"unknown_peer": 3, "spoofed_source": 1}}, nil
}

func (f *fakeSource) Networks(ctx context.Context) ([]control.Network, error) {
	return []control.Network{{ID: "5c87f637aa11bb22cc33", Bridge: "tw-5c87f637", Overlay: "10.96.0.0/16", Subnet: "10.96.7.0/24", Gateway: "10.96.7.1", MTU: 1472, Endpoints: 2}}, nil
}

func (f *fakeSource) Endpoints(ctx context.Context) ([]control.Endpoint, error) {
	return []control.Endpoint{
		{ID: "896c02fc00112233aabb", Network: "5c87f637aa11bb22cc33", Address: "10.96.7.2/24", MAC: "02:42:0a:60:07:02", Veth: "twv896c02fc",
			Ports: []string{"0.0.0.0:8080->80/tcp", "10.0.0.5:5353->53/udp"}},
		{ID: "a1b2c3d4e5f60718293a", Network: "5c87f637aa11bb22cc33", Address: "10.96.7.3/24", MAC: "02:42:0a:60:07:03", Veth: "twva1b2c3d4", Ports: []string{}},
	}, nil
}

func (f *fakeSource) Names(ctx context.Context) ([]control.Name, error) {
	return []control.Name{
		{Name: "web", Address: "10.96.9.4", Host: "10.0.0.2", Network: "proj_default", Overlay: "10.96.0.0/16", Container: "c2c2c2c2c2c2c2c2"},
		{Name: "proj-web-1", Address: "10.96.7.2", Host: "10.0.0.1", Network: "proj_default", Overlay: "10.96.0.0/16", Container: "896c02fc00112233aabb"},
		{Name: "web", Address: "10.96.7.2", Host: "10.0.0.1", Network: "proj_default", Overlay: "10.96.0.0/16", Container: "896c02fc00112233aabb"},
		{Name: "db", Address: "10.96.12.3", Host: "10.0.0.9", Network: "backend", Overlay: "10.96.0.0/16", Container: "d1d1d1d1d1d1d1d1"},
	}, nil
}

func (f *fakeSource) Leave(ctx context.Context) error {
	if f.left {
		return errors.New("no lease held")
	}
	f.left = true
	return nil
}

func serveFake(t *testing.T) string {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := control.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: control.Handler(&fakeSource{exp: time.Now().Add(23*time.Hour + 30*time.Second)}, nil)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestTablesMatchGolden(t *testing.T) {
	sock := serveFake(t)
	for _, cmd := range []string{"status", "leases", "peers", "networks", "endpoints", "names"} {
		var out, errb bytes.Buffer
		if rc := run([]string{"--socket", sock, cmd}, &out, &errb); rc != 0 {
			t.Fatalf("%s: rc %d: %s", cmd, rc, errb.String())
		}
		golden := filepath.Join("testdata", cmd+".golden")
		if *update {
			os.WriteFile(golden, out.Bytes(), 0o644)
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if out.String() != string(want) {
			t.Errorf("%s output:\n%s\nwant:\n%s", cmd, out.String(), want)
		}
	}
}

func TestJSONSchema(t *testing.T) {
	sock := serveFake(t)
	want := map[string][]string{
		"status":    {"hostname", "public_ip", "port", "mtu", "offload", "etcd", "etcd_healthy", "uptime_seconds", "overlays"},
		"peers":     {"peers", "drops"},
		"leases":    {"network", "subnet", "public_ip", "backend_type", "expiry", "self", "flanneld"},
		"networks":  {"id", "bridge", "overlay", "subnet", "gateway", "internal", "mtu", "endpoints"},
		"endpoints": {"id", "network", "address", "mac", "veth", "ports"},
		"names":     {"name", "address", "host", "network", "overlay", "container"},
	}
	for cmd, keys := range want {
		var out, errb bytes.Buffer
		if rc := run([]string{"--socket", sock, "--json", cmd}, &out, &errb); rc != 0 {
			t.Fatalf("%s: rc %d: %s", cmd, rc, errb.String())
		}
		var obj map[string]any
		var list []map[string]any
		if err := json.Unmarshal(out.Bytes(), &obj); err != nil {
			if err := json.Unmarshal(out.Bytes(), &list); err != nil || len(list) == 0 {
				t.Fatalf("%s --json is neither an object nor a non-empty list: %s", cmd, out.String())
			}
			obj = list[0]
		}
		for _, k := range keys {
			if _, ok := obj[k]; !ok {
				t.Errorf("%s --json lacks %q: %s", cmd, k, out.String())
			}
		}
	}
}

func TestErrorsSayWhatToDo(t *testing.T) {
	var out, errb bytes.Buffer
	rc := run([]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "status"}, &out, &errb)
	if rc != 1 || !strings.Contains(errb.String(), "is twilld running") {
		t.Errorf("rc %d, stderr %q", rc, errb.String())
	}
	errb.Reset()
	if rc := run([]string{"bogus"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "unknown command") {
		t.Errorf("rc %d, stderr %q", rc, errb.String())
	}
	sock := serveFake(t)
	errb.Reset()
	run([]string{"--socket", sock, "leave"}, &out, &errb)
	if rc := run([]string{"--socket", sock, "leave"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "no lease held") {
		t.Errorf("second leave: rc %d, stderr %q", rc, errb.String())
	}
}

// TestFlagsEitherSide: every command gives the same output and exit code with
// its flags before the command (`twillctl --json status`), after it
// (`twillctl status --json`, as with docker and kubectl) and split around it.
func TestFlagsEitherSide(t *testing.T) {
	none := filepath.Join(t.TempDir(), "none.sock") // doctor against no daemon: no traffic leaves this test
	for _, tc := range []struct {
		cmd   string
		fresh bool                         // a new daemon per run (leave changes its state)
		flags func(sock string) [][]string // one flag (and its value) each
	}{
		{cmd: "status", flags: func(s string) [][]string { return [][]string{{"--socket", s}, {"--json"}} }},
		{cmd: "status", flags: func(s string) [][]string { return [][]string{{"-json=false"}, {"-socket=" + s}} }},
		{cmd: "leases", flags: func(s string) [][]string { return [][]string{{"--json"}, {"--socket", s}, {"--etcd-prefix", "/x"}} }},
		{cmd: "peers", flags: func(s string) [][]string { return [][]string{{"--etcd-endpoints", ""}, {"--socket", s}} }},
		{cmd: "networks", flags: func(s string) [][]string { return [][]string{{"--socket", s}, {"--json"}} }},
		{cmd: "endpoints", flags: func(s string) [][]string { return [][]string{{"--json"}, {"--socket=" + s}} }},
		{cmd: "doctor", flags: func(string) [][]string { return [][]string{{"--socket", none}, {"--json"}} }},
		{cmd: "doctor", flags: func(string) [][]string { return [][]string{{"--json=0"}, {"--socket", none}} }},
		{cmd: "leave", fresh: true, flags: func(s string) [][]string { return [][]string{{"--socket", s}, {"--json"}} }},
		{cmd: "leave", fresh: true, flags: func(s string) [][]string { return [][]string{{"--json=false"}, {"--socket", s}} }},
	} {
		shared := serveFake(t)
		flags := func() [][]string {
			if tc.fresh {
				return tc.flags(serveFake(t))
			}
			return tc.flags(shared)
		}
		join := func(parts ...[][]string) []string {
			var out []string
			for _, p := range parts {
				for _, f := range p {
					out = append(out, f...)
				}
			}
			return out
		}
		cmd := [][]string{{tc.cmd}}
		f := flags()
		before := join(f, cmd)
		f = flags()
		after := join(cmd, f)
		f = flags()
		split := join(f[:1], cmd, f[1:])
		var want string
		wantRC := -1
		for _, args := range [][]string{before, after, split} {
			var out, errb bytes.Buffer
			rc := run(args, &out, &errb)
			if strings.Contains(errb.String(), "usage:") {
				t.Errorf("%q: usage printed: %s", args, errb.String())
			}
			if wantRC == -1 {
				want, wantRC = out.String(), rc
				if want == "" {
					t.Errorf("%q printed nothing (rc %d): %s", args, rc, errb.String())
				}
				continue
			}
			if rc != wantRC || out.String() != want {
				t.Errorf("%q: rc %d, output\n%s\nwant rc %d, output\n%s", args, rc, out.String(), wantRC, want)
			}
		}
	}
}

// TestBadArguments: unknown flags, missing values and extra words are refused
// with a message saying which, wherever they stand.
func TestBadArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"--bogus", "status"}, "flag provided but not defined: -bogus"},
		{[]string{"status", "--socket"}, "flag needs an argument: -socket"},
		{[]string{"status", "peers"}, `one command expected, got ["status" "peers"]`},
		{[]string{"--json"}, "usage: twillctl"},
		{[]string{"--", "--json"}, `twillctl --json: "--json": unknown command`},
	} {
		var out, errb bytes.Buffer
		rc := run(tc.args, &out, &errb)
		if rc == 0 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%q: rc %d, stderr %q, want it to say %q", tc.args, rc, errb.String(), tc.want)
		}
	}
}

// TestDoctorExitStatus: a problem fails the table and the --json form alike,
// since scripts read the exit status, not the output.
func TestDoctorExitStatus(t *testing.T) {
	none := filepath.Join(t.TempDir(), "none.sock") // no daemon: the twilld check fails, no traffic leaves
	for _, args := range [][]string{{"--socket", none, "doctor"}, {"--socket", none, "doctor", "--json"}} {
		var out, errb bytes.Buffer
		if rc := run(args, &out, &errb); rc == 0 {
			t.Errorf("%q: rc 0 although twilld is not running; output %s", args, out.String())
		}
	}
}
