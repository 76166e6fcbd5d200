package ipam

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports keeps the IPAM away from the kernel and etcd: it sees them
// only through interfaces (STYLE.md, "Dependencies point one way").
func TestImports(t *testing.T) {
	checkImports(t, ".")
}

func checkImports(t *testing.T, dir string) {
	t.Helper()
	pkg, err := build.ImportDir(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		for _, banned := range []string{"netlink", "go.etcd.io/etcd", "twill/datapath", "twill/cmd", "twill/plugin", "golang.org/x/sys"} {
			if strings.Contains(imp, banned) {
				t.Errorf("package %s imports %s", pkg.ImportPath, imp)
			}
		}
	}
}
