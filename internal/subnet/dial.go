package subnet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// ErrEtcdUnreachable is returned by Dial when no endpoint answered in time.
var ErrEtcdUnreachable = errors.New("etcd unreachable")

// ErrEtcdTLS is returned by Dial when the TLS setup or handshake fails.
var ErrEtcdTLS = errors.New("etcd TLS failed")

// DefaultDialTimeout bounds Dial when DialConfig.DialTimeout is zero.
const DefaultDialTimeout = 5 * time.Second

// DialConfig says how to reach etcd (ETCD_ENDPOINTS, ETCD_CAFILE, ...).
type DialConfig struct {
	Endpoints []string // e.g. ["http://10.0.0.5:2379"]; https:// or any TLS file turns TLS on
	CAFile    string   // PEM CA that signed etcd's certificate; empty: system roots
	CertFile  string   // client certificate, with KeyFile, for etcd's client-cert-auth
	KeyFile   string
	// DialTimeout bounds the connection check (DefaultDialTimeout if zero).
	DialTimeout time.Duration
}

// Dial connects to etcd and checks that it answers, so a daemon started while
// etcd is down or misconfigured fails at once with an error that names the
// endpoints and what to check, instead of hanging. The check is bounded by
// DialTimeout (and ctx). A wrong CA gives an error wrapping ErrEtcdTLS that
// says "certificate signed by unknown authority" and names ETCD_CAFILE.
func Dial(ctx context.Context, c DialConfig) (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, fmt.Errorf("no etcd endpoints given (ETCD_ENDPOINTS): %w", ErrEtcdUnreachable)
	}
	timeout := c.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	tlsCfg, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// Probe each endpoint ourselves first: the etcd client retries silently
	// and would report only "context deadline exceeded".
	var probeErrs []error
	for _, ep := range c.Endpoints {
		err := probe(ctx, ep, tlsCfg)
		if err == nil {
			probeErrs = nil
			break
		}
		probeErrs = append(probeErrs, err)
	}
	if len(probeErrs) > 0 {
		for _, err := range probeErrs {
			if errors.Is(err, ErrEtcdTLS) {
				return nil, c.tlsError(err)
			}
		}
		return nil, fmt.Errorf("no etcd answers at %s within %s (%w): check that etcd is running there and that ETCD_ENDPOINTS is right: %w",
			strings.Join(c.Endpoints, ","), timeout, errors.Join(probeErrs...), ErrEtcdUnreachable)
	}

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            c.Endpoints,
		DialTimeout:          timeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsCfg,
		Logger:               zap.NewNop(),
		Context:              context.WithoutCancel(ctx),
		// gRPC's default reconnect backoff grows to 2 minutes: after a long
		// etcd outage twilld would stay disconnected long after etcd is
		// back. Retry at least every 5 s.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd at %s: %w", strings.Join(c.Endpoints, ","), err)
	}
	if _, err := cli.Get(ctx, "/twill-dial-check", clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd at %s accepts connections but did not answer a read within %s (%v): check the scheme (http/https) in ETCD_ENDPOINTS, the TLS files, and etcd's health: %w",
			strings.Join(c.Endpoints, ","), timeout, err, ErrEtcdUnreachable)
	}
	return cli, nil
}

func (c DialConfig) tlsConfig() (*tls.Config, error) {
	https := false
	for _, ep := range c.Endpoints {
		https = https || strings.HasPrefix(ep, "https://") || strings.HasPrefix(ep, "unixs://")
	}
	if !https && c.CAFile == "" && c.CertFile == "" && c.KeyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading ETCD_CAFILE: %w: %w", err, ErrEtcdTLS)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ETCD_CAFILE %s holds no PEM certificate: %w", c.CAFile, ErrEtcdTLS)
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, fmt.Errorf("ETCD_CERTFILE (%q) and ETCD_KEYFILE (%q) must be given together: %w", c.CertFile, c.KeyFile, ErrEtcdTLS)
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading ETCD_CERTFILE %s and ETCD_KEYFILE %s: %w: %w", c.CertFile, c.KeyFile, err, ErrEtcdTLS)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// tlsProbeError is a failed TLS handshake with one endpoint.
type tlsProbeError struct {
	ep  string
	err error
}

func (e *tlsProbeError) Error() string {
	return "etcd at " + e.ep + ": TLS handshake: " + e.err.Error()
}
func (e *tlsProbeError) Unwrap() []error { return []error{e.err, ErrEtcdTLS} }

// tlsError turns a failed handshake into advice naming the setting to fix.
func (c DialConfig) tlsError(err error) error {
	var pe *tlsProbeError
	if !errors.As(err, &pe) {
		return err
	}
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	msg := pe.err.Error()
	var what string
	switch {
	case errors.As(err, &ua) && c.CAFile != "":
		what = fmt.Sprintf("certificate signed by unknown authority: etcd's certificate is not signed by the CA in ETCD_CAFILE (%s); check ETCD_CAFILE", c.CAFile)
	case errors.As(err, &ua):
		what = "certificate signed by unknown authority: no CA the system trusts signed etcd's certificate; set ETCD_CAFILE to the CA that did"
	case errors.As(err, &he):
		what = "etcd's certificate does not name the host in ETCD_ENDPOINTS; use a name or IP the certificate holds"
	case errors.As(err, &ci):
		what = "etcd's certificate is not valid (expired, or not for servers); check etcd's certificate and ETCD_CAFILE"
	case strings.Contains(msg, "certificate required"):
		what = "etcd requires a client certificate; set ETCD_CERTFILE and ETCD_KEYFILE"
	case strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority"):
		what = "etcd refused the client certificate; check ETCD_CERTFILE and ETCD_KEYFILE (signed by a CA etcd trusts?)"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		what = "etcd does not speak TLS there; use http:// in ETCD_ENDPOINTS or check the port"
	default:
		what = "TLS handshake failed; check ETCD_CAFILE, ETCD_CERTFILE and ETCD_KEYFILE"
	}
	return fmt.Errorf("etcd at %s: %s (%v): %w", pe.ep, what, pe.err, ErrEtcdTLS)
}

// probe opens a connection to one endpoint, with a TLS handshake when TLS is
// configured, and closes it.
func probe(ctx context.Context, ep string, tlsCfg *tls.Config) error {
	network, addr, host := "tcp", ep, ""
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil {
			return fmt.Errorf("endpoint %q is not a URL: %w", ep, err)
		}
		switch u.Scheme {
		case "unix", "unixs":
			network, addr = "unix", u.Host+u.Path
		default:
			addr = u.Host
		}
	}
	if network == "tcp" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("endpoint %q has no host:port: %w", ep, err)
		}
		host, _, _ = net.SplitHostPort(addr)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return fmt.Errorf("%s: %w", ep, err)
	}
	defer conn.Close()
	if tlsCfg == nil {
		return nil
	}
	cfg := tlsCfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	cfg.NextProtos = []string{"h2"} // what the gRPC client will offer
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: TLS handshake: %w", ep, err)
		}
		return &tlsProbeError{ep: ep, err: err}
	}
	// TLS 1.3 reports a refused client certificate only on the first read.
	_ = tc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var b [1]byte
	if _, err := tc.Read(b[:]); err != nil && !isTimeout(err) {
		if strings.Contains(err.Error(), "certificate") {
			return &tlsProbeError{ep: ep, err: err}
		}
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
