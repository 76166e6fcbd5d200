package subnet

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteEnvAsFlanneld(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "flannel", "subnet.env")
	e := Env{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.20.0/24"), MTU: 1472}
	if err := WriteEnv(path, e); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const want = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.20.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
	if string(b) != want {
		t.Fatalf("got\n%s\nwant\n%s", b, want)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}

	// Rewriting replaces the file whole and leaves no temp files behind.
	e.Subnet, e.IPMasq = netip.MustParsePrefix("10.244.33.0/24"), true
	if err := WriteEnv(path, e); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if string(b) != "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.33.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n" {
		t.Fatalf("after rewrite: %s", b)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only subnet.env", len(ents))
	}
	if err := WriteEnv(path, Env{}); err == nil {
		t.Error("empty Env written")
	}
}

func TestFileStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "subnets.json")
	s := NewFileStore(path)
	ov := netip.MustParsePrefix("10.96.0.0/16")
	if sn, err := s.LastSubnet(ov); err != nil || sn.IsValid() {
		t.Fatalf("empty store: %v %v", sn, err)
	}
	if err := s.SaveSubnet(ov, netip.MustParsePrefix("10.96.7.0/24")); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveSubnet(netip.MustParsePrefix("10.97.0.0/16"), netip.MustParsePrefix("10.97.3.0/24")); err != nil {
		t.Fatal(err)
	}
	id, err := s.HostID()
	if err != nil || len(id) != 16 {
		t.Fatalf("host ID %q %v", id, err)
	}
	s2 := NewFileStore(path) // as after a restart
	if sn, err := s2.LastSubnet(ov); err != nil || sn != netip.MustParsePrefix("10.96.7.0/24") {
		t.Fatalf("after reopen: %v %v", sn, err)
	}
	if id2, err := s2.HostID(); err != nil || id2 != id {
		t.Fatalf("host ID after reopen %q %v, want %q", id2, err, id)
	}
	if other, _ := NewFileStore(filepath.Join(t.TempDir(), "x.json")).HostID(); other == id {
		t.Fatal("two state dirs share a host ID")
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := s2.LastSubnet(ov); err == nil {
		t.Error("corrupt file read without error")
	}
	if err := s2.SaveSubnet(ov, netip.MustParsePrefix("10.96.8.0/24")); err != nil {
		t.Fatalf("saving over a corrupt file: %v", err)
	}
}
