package plugin

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/twill-net/twill/driver"
	"github.com/twill-net/twill/internal/store"
	"github.com/twill-net/twill/ipam"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	goleak.VerifyTestMain(m)
}

const tunnelMTU = 1472

var (
	blue     = netip.MustParsePrefix("10.96.0.0/16")
	blueHost = netip.MustParsePrefix("10.96.7.0/24")
	red      = netip.MustParsePrefix("10.97.0.0/16")
	redHost  = netip.MustParsePrefix("10.97.3.0/24")
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// backends is twill's request path with a fake kernel and a fixed overlay:
// the real ipam and driver on a real state store in dir.
type backends struct {
	db    *store.DB
	ipam  *ipam.IPAM
	drv   *driver.Driver
	links *driver.FakeLinks
	fw    *driver.FakeFirewall
}

func newBackends(dir string, log *slog.Logger) (*backends, error) {
	fake := driver.NewFakeLinks()
	b, err := newBackendsWith(dir, log, fake)
	if err != nil {
		return nil, err
	}
	b.links = fake
	return b, nil
}

// newBackendsWith is newBackends on the given kernel links.
func newBackendsWith(dir string, log *slog.Logger, links driver.Links) (*backends, error) {
	db, err := store.Open(dir, log)
	if err != nil {
		return nil, err
	}
	ov := ipam.NewFakeOverlays(blue, map[netip.Prefix]netip.Prefix{blue: blueHost, red: redHost})
	p, err := ipam.New(log, ov, db)
	if err != nil {
		db.Close()
		return nil, err
	}
	b := &backends{db: db, ipam: p, fw: driver.NewFakeFirewall()}
	b.drv, err = driver.New(log, links, b.fw, p, db, driver.Config{MTU: tunnelMTU, PluginName: "twill:latest"})
	if err != nil {
		db.Close()
		return nil, err
	}
	return b, nil
}

// socketDir returns a short directory for a socket: Unix socket paths are
// limited to 108 bytes, which t.TempDir() can exceed.
func socketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "twp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serve runs srv on a fresh socket until the test ends.
func serve(t testing.TB, srv *Server) *client {
	t.Helper()
	sock := filepath.Join(socketDir(t), "twill.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, l) }()
	c := newClient(sock)
	t.Cleanup(func() {
		c.close()
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return c
}

type stack struct {
	*backends
	srv *Server
	c   *client
}

// startStack serves a ready twill (fake kernel, state in a temp dir).
func startStack(t testing.TB, opts Options) *stack {
	t.Helper()
	if opts.Log == nil {
		opts.Log = quiet()
	}
	b, err := newBackends(t.TempDir(), opts.Log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.db.Close() })
	srv := New(opts)
	srv.Ready(b.drv, b.ipam)
	return &stack{backends: b, srv: srv, c: serve(t, srv)}
}

// client speaks to a plugin socket the way dockerd's plugin client does.
type client struct {
	sock string
	tr   *http.Transport
	http *http.Client
}

func newClient(sock string) *client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	return &client{sock: sock, tr: tr, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (c *client) close() { c.tr.CloseIdleConnections() }

// post sends body to /method and returns the status and the body.
func (c *client) post(method, body string) (int, string, error) {
	req, err := http.NewRequest(http.MethodPost, "http://plugin/"+method, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Accept", ContentType)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// ok posts and fails the test unless the call succeeded; it returns the body.
func (c *client) ok(t testing.TB, method, body string) string {
	t.Helper()
	status, resp, err := c.post(method, body)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	if status != http.StatusOK {
		t.Fatalf("%s %s: HTTP %d %s", method, body, status, resp)
	}
	return resp
}

// fail posts and fails the test unless the call failed with {"Err": ...}
// mentioning every string in mention; it returns the message.
func (c *client) fail(t testing.TB, method, body string, mention ...string) string {
	t.Helper()
	status, resp, err := c.post(method, body)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	var e struct{ Err string }
	if jerr := json.Unmarshal([]byte(resp), &e); status == http.StatusOK || jerr != nil || e.Err == "" {
		t.Fatalf("%s %s: want an error, got HTTP %d %s", method, body, status, resp)
	}
	for _, m := range mention {
		if !strings.Contains(e.Err, m) {
			t.Errorf("%s: error %q does not mention %q", method, e.Err, m)
		}
	}
	return e.Err
}

// field decodes one string field of a JSON answer.
func field(t testing.TB, js, name string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(js), &m); err != nil {
		t.Fatalf("decoding %s: %v", js, err)
	}
	s, _ := m[name].(string)
	return s
}
