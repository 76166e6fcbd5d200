package deptest

import (
	"os/exec"
	"strings"
	"testing"
)

// TestEveryPackageSaysWhatItIsFor: `go doc` shows a package comment for every
// package of the module (STYLE.md 18), test-only packages included (they carry
// it in a doc.go, since go doc reads no _test.go file).
func TestEveryPackageSaysWhatItIsFor(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}\t{{.Name}}\t{{.Doc}}", module+"...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "\t", 3)
		if len(f) != 3 {
			t.Fatalf("go list line %q", line)
		}
		n++
		want := "Package " + f[1] + " "
		if f[1] == "main" {
			want = "Command "
		}
		if !strings.HasPrefix(f[2], want) {
			t.Errorf("%s: package comment %q, want one starting %q (in a doc.go for a test-only package)", f[0], f[2], want)
		}
	}
	if n < 10 {
		t.Errorf("go list found %d packages:\n%s", n, out)
	}
}
