package subnet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

func TestDialOK(t *testing.T) {
	cli, err := Dial(ctxT(t), DialConfig{Endpoints: shared.Endpoints(), DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctxT(t), testPrefix(t)+"/k", "v"); err != nil {
		t.Fatal(err)
	}
}

func TestDialEtcdDownIsClearAndBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now

	start := time.Now()
	_, err = Dial(ctxT(t), DialConfig{Endpoints: []string{down}, DialTimeout: time.Second})
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Dial took %v with a 1s timeout", took)
	}
	if !errors.Is(err, ErrEtcdUnreachable) {
		t.Fatalf("err %v, want ErrEtcdUnreachable", err)
	}
	t.Logf("etcd down: %v", err)
	for _, s := range []string{down, "connection refused", "check that etcd is running", "ETCD_ENDPOINTS"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}

	// Something accepts but never answers (a wrong port, a hung etcd).
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start = time.Now()
	_, err = Dial(ctxT(t), DialConfig{Endpoints: []string{"http://" + ln.Addr().String()}, DialTimeout: time.Second})
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Dial to a silent server took %v with a 1s timeout", took)
	}
	if !errors.Is(err, ErrEtcdUnreachable) || !strings.Contains(err.Error(), "did not answer") || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("silent server: %v", err)
	}

	if _, err := Dial(ctxT(t), DialConfig{}); !errors.Is(err, ErrEtcdUnreachable) || !strings.Contains(err.Error(), "ETCD_ENDPOINTS") {
		t.Errorf("no endpoints: %v", err)
	}
}

func TestDialTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	otherCA := newCA(t, dir, "other-ca")
	srvCert, srvKey := ca.issue(t, dir, "server", true)
	cliCert, cliKey := ca.issue(t, dir, "client", false)
	ep := startTLSEtcd(t, filepath.Join(dir, "etcd"), srvCert, srvKey, ca.certFile)

	// Wrong CA: the server's certificate does not verify.
	_, err := Dial(ctxT(t), DialConfig{Endpoints: []string{ep}, CAFile: otherCA.certFile, CertFile: cliCert, KeyFile: cliKey, DialTimeout: 2 * time.Second})
	if !errors.Is(err, ErrEtcdTLS) {
		t.Fatalf("wrong CA: %v, want ErrEtcdTLS", err)
	}
	t.Logf("wrong CA: %v", err)
	for _, s := range []string{"certificate signed by unknown authority", "ETCD_CAFILE", otherCA.certFile, ep} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("wrong CA: error %q does not say %q", err, s)
		}
	}
	// No CA at all: the system roots do not know it either.
	_, err = Dial(ctxT(t), DialConfig{Endpoints: []string{ep}, CertFile: cliCert, KeyFile: cliKey, DialTimeout: 2 * time.Second})
	if !errors.Is(err, ErrEtcdTLS) || !strings.Contains(err.Error(), "unknown authority") || !strings.Contains(err.Error(), "ETCD_CAFILE") {
		t.Errorf("no CA: %v", err)
	}
	// Right CA, but no client certificate where etcd requires one.
	_, err = Dial(ctxT(t), DialConfig{Endpoints: []string{ep}, CAFile: ca.certFile, DialTimeout: 2 * time.Second})
	if !errors.Is(err, ErrEtcdTLS) || !strings.Contains(err.Error(), "ETCD_CERTFILE") {
		t.Errorf("no client certificate: %v", err)
	}
	t.Logf("no client certificate: %v", err)
	// Right everything.
	cli, err := Dial(ctxT(t), DialConfig{Endpoints: []string{ep}, CAFile: ca.certFile, CertFile: cliCert, KeyFile: cliKey, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctxT(t), "k", "v"); err != nil {
		t.Fatal(err)
	}
	// Plain http to the TLS port.
	_, err = Dial(ctxT(t), DialConfig{Endpoints: []string{strings.Replace(ep, "https", "http", 1)}, DialTimeout: time.Second})
	if err == nil {
		t.Error("plain http to a TLS etcd worked")
	}

	// Broken settings are named.
	for _, c := range []DialConfig{
		{Endpoints: []string{ep}, CAFile: filepath.Join(dir, "missing.pem")},
		{Endpoints: []string{ep}, CAFile: cliKey},
		{Endpoints: []string{ep}, CAFile: ca.certFile, CertFile: cliCert},
	} {
		_, err := Dial(ctxT(t), c)
		if !errors.Is(err, ErrEtcdTLS) || !strings.Contains(err.Error(), "ETCD_") {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// startTLSEtcd runs an etcd that serves clients over TLS only and requires a
// client certificate signed by caFile.
func startTLSEtcd(t *testing.T, dir, cert, key, caFile string) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cu, _ := url.Parse("https://127.0.0.1:0")
	pu, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: cert, KeyFile: key, TrustedCAFile: caFile, ClientCertAuth: true}
	cfg.UnsafeNoFsync = true
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("TLS etcd not ready")
	}
	return "https://" + e.Clients[0].Addr().String()
}

type testCA struct {
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	certFile string
}

func newCA(t *testing.T, dir, name string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	f := filepath.Join(dir, name+".pem")
	writePEM(t, f, "CERTIFICATE", der)
	return testCA{cert: cert, key: key, certFile: f}
}

// issue signs a certificate for 127.0.0.1 (server) or a client.
func (ca testCA) issue(t *testing.T, dir, name string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
