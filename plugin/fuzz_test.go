package plugin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/twill-net/twill/driver"
	"github.com/twill-net/twill/internal/store"
	"github.com/twill-net/twill/ipam"
)

// FuzzPluginCall sends arbitrary bodies to every plugin method: the server
// never panics and always answers JSON, with {"Err": ...} on failure.
func FuzzPluginCall(f *testing.F) {
	methods := make([]string, 0, len(routes))
	for m := range routes {
		methods = append(methods, m)
	}
	sort.Strings(methods)
	st := store.NewMemory()
	ov := ipam.NewFakeOverlays(blue, map[netip.Prefix]netip.Prefix{blue: blueHost, red: redHost})
	p, err := ipam.New(quiet(), ov, st)
	if err != nil {
		f.Fatal(err)
	}
	d, err := driver.New(quiet(), driver.NewFakeLinks(), driver.NewFakeFirewall(), p, st, driver.Config{MTU: tunnelMTU})
	if err != nil {
		f.Fatal(err)
	}
	srv := New(Options{Log: quiet()})
	srv.Ready(d, p)

	for i, body := range []string{reqPoolBlue, reqGateway, createNetBlue, `{` + epIDs + `,` + epOptions + `}`,
		`{` + epIDs + `,"Interface":{"Address":"10.96.7.50/24"}}`, `null`, ``, `{"PoolID":"twill/10.96.7.0/24","Address":"10.96.7.300"}`} {
		f.Add(uint8(i), body)
	}
	f.Fuzz(func(t *testing.T, m uint8, body string) {
		method := methods[int(m)%len(methods)]
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/"+method, strings.NewReader(body)))
		var v any
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatalf("%s %q: answer is not JSON: %q", method, body, rec.Body)
		}
		if rec.Code != http.StatusOK {
			var e struct{ Err string }
			if json.Unmarshal(rec.Body.Bytes(), &e); e.Err == "" {
				t.Fatalf("%s %q: HTTP %d without Err: %s", method, body, rec.Code, rec.Body)
			}
		}
	})
}
