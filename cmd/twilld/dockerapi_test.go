package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// versionedDocker serves /_ping and /networks as a dockerd of API version cur
// that refuses versions below min; an empty cur answers no Api-Version
// header. It records the paths asked for.
func versionedDocker(t *testing.T, cur, min string) (sock string, paths func() []string) {
	sock = filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path)
		mu.Unlock()
		if cur != "" {
			w.Header().Set("Api-Version", cur)
		}
		path := r.URL.Path
		if strings.HasPrefix(path, "/v") {
			v, rest, _ := strings.Cut(path[2:], "/")
			if apiLess(v, min) || apiLess(cur, v) {
				http.Error(w, fmt.Sprintf(`{"message":"client version %s is not supported"}`, v), http.StatusBadRequest)
				return
			}
			path = "/" + rest
		}
		switch path {
		case "/_ping":
			fmt.Fprint(w, "OK")
		case "/networks":
			fmt.Fprint(w, `[{"ID":"n1"},{"ID":"n2"}]`)
		default:
			http.NotFound(w, r)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), seen...) }
}

func TestDockerNetworksNegotiatesAPIVersion(t *testing.T) {
	cases := []struct {
		name, cur, min, want string
	}{
		{"docker 20.10", "1.41", "1.12", "/v1.41/networks"},
		{"docker 29", "1.52", "1.44", "/v1.52/networks"},
		{"newer than twill knows", "1.60", "1.44", "/v" + maxDockerAPI + "/networks"},
		// a daemon whose minimum passed twill's maximum: its own version, unversioned
		{"minimum above twill's maximum", "1.70", "1.60", "/networks"},
		{"no version header", "", "1.0", "/networks"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sock, paths := versionedDocker(t, c.cur, c.min)
			ids, err := dockerNetworks(context.Background(), sock)
			if err != nil {
				t.Fatal(err)
			}
			if !ids["n1"] || !ids["n2"] || len(ids) != 2 {
				t.Errorf("networks %v, want n1 n2", ids)
			}
			got := paths()
			if last := got[len(got)-1]; last != c.want {
				t.Errorf("asked %v, want the listing from %s", got, c.want)
			}
		})
	}
}

func TestAPIVersionParsing(t *testing.T) {
	for v, ok := range map[string]bool{"1.41": true, "1.56": true, "2.0": true, "": false, "1": false, "1.4x": false, "v1.41": false, "1.041": false} {
		if validAPIVersion(v) != ok {
			t.Errorf("validAPIVersion(%q) = %v, want %v", v, !ok, ok)
		}
	}
	if !apiLess("1.9", "1.41") || apiLess("1.44", "1.44") || !apiLess("1.56", "2.0") {
		t.Error("apiLess compares numerically by major then minor")
	}
}
