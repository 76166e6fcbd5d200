package overlay

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsPointOneWay keeps the datapath free of etcd, the plugin API
// and the daemon's wiring (STYLE.md rule 4): only non-test files count.
func TestImportsPointOneWay(t *testing.T) {
	files, err := filepath.Glob("*.go")
	must(t, err)
	forbidden := []string{"go.etcd.io/", "github.com/docker/", "github.com/twill-net/twill/cmd", "github.com/twill-net/twill/plugin",
		"github.com/twill-net/twill/driver", "github.com/twill-net/twill/ipam"}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		must(t, err)
		af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
		must(t, err)
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if strings.HasPrefix(p, bad) {
					t.Errorf("%s imports %s", f, p)
				}
			}
		}
	}
}
