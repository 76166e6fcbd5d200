package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/twill-net/twill/datapath/overlay"
	"github.com/twill-net/twill/names"
)

// config is twilld's settings, parsed and validated once. Every setting is an
// environment variable (what `docker plugin set` changes) and a flag; the flag wins.
type config struct {
	EtcdEndpoints []string
	EtcdPrefix    string
	EtcdCAFile    string
	EtcdCertFile  string
	EtcdKeyFile   string

	Iface    string     // underlay interface name or address; empty = the default route's
	PublicIP netip.Addr // address peers send UDP to; invalid = the address of Iface
	Network  netip.Prefix
	Port     uint16
	MTU      int // 0 = underlay MTU - 28
	Offload  string
	BusyPoll time.Duration // 0 = off
	Datapath string        // auto, kernel or tun
	BPFFS    string        // bpf filesystem the kernel datapath pins its links in; empty = none

	StateDir      string
	SubnetEnv     string
	ControlSocket string
	MetricsAddr   string
	PluginDir     string
	PluginName    string           // how users name twill in -d and --ipam-driver
	OrphanAge     time.Duration    // an unused allocation older than this is given back
	DockerSocket  string           // dockerd's API, for reconciliation after a start and for names
	Names         bool             // names across hosts: resolver, records, Docker watcher
	DNSUpstream   []netip.AddrPort // where the resolver forwards; empty = the host's resolv.conf
	LogLevel      slog.Level
	LogFormat     string
}

// setting is one row of the settings table: its env name, flag name, default
// and help text.
type setting struct {
	env, flag, def, help string
}

var settings = []setting{
	{"ETCD_ENDPOINTS", "etcd-endpoints", "", "comma-separated etcd URLs; empty starts an embedded etcd on 127.0.0.1"},
	{"ETCD_PREFIX", "etcd-prefix", "/coreos.com/network", "etcd key prefix (flannel's default)"},
	{"ETCD_CAFILE", "etcd-cafile", "", "CA certificate for TLS to etcd"},
	{"ETCD_CERTFILE", "etcd-certfile", "", "client certificate for TLS to etcd"},
	{"ETCD_KEYFILE", "etcd-keyfile", "", "client key for TLS to etcd"},
	{"TWILL_IFACE", "iface", "", "underlay interface (name or IP); empty = the default route's interface"},
	{"TWILL_PUBLIC_IP", "public-ip", "", "address peers send UDP to; empty = the address of --iface"},
	{"TWILL_NETWORK", "network", "10.96.0.0/16", "overlay written to <prefix>/config when none exists"},
	{"TWILL_PORT", "port", "8285", "UDP port of the tunnel (flannel udp backend's)"},
	{"TWILL_MTU", "mtu", "", "TUN, bridge and veth MTU; empty = underlay MTU - 28"},
	{"TWILL_OFFLOAD", "offload", "auto", "datapath offloads: auto (TSO/GRO + UDP GSO/GRO when the kernel has them) or off"},
	{"TWILL_BUSY_POLL", "busy-poll", "0", "after sparse traffic, poll without sleeping until nothing came for this long (e.g. 50ms): lower latency for one CPU kept busy meanwhile; 0 = off"},
	{"TWILL_DATAPATH", "datapath", "auto", "auto (the kernel path when the kernel, the privileges and the underlay allow it), kernel (eBPF programs forward in the kernel; fail if they cannot) or tun (twilld forwards through twill0)"},
	{"TWILL_BPF_FS", "bpf-fs", "/sys/fs/bpf", "bpf filesystem where the kernel datapath pins its programs' links, so that they forward while twilld restarts; empty = they stop with twilld"},
	{"TWILL_STATE_DIR", "state-dir", "/var/lib/twill", "persisted state (allocations, endpoints, embedded etcd)"},
	{"TWILL_SUBNET_ENV", "subnet-env", "/run/flannel/subnet.env", "where to write flannel's subnet.env; empty = do not write"},
	{"TWILL_CONTROL_SOCKET", "control-socket", "", "twillctl's socket; empty = <state-dir>/twill-ctl.sock"},
	{"TWILL_METRICS_ADDR", "metrics-addr", "127.0.0.1:9586", "Prometheus /metrics listen address; empty = off"},
	{"TWILL_DOCKER_SOCKET", "docker-socket", "/run/docker.sock", "dockerd's API socket: read after a start to remove networks deleted while twill was down, and followed for names across hosts (a managed plugin's is /host-run/docker.sock, in its docker-run mount); empty = off"},
	{"TWILL_NAMES", "names", "on", "names across hosts: a resolver on each overlay's fixed address (e.g. 10.96.0.53) answering containers' names from every host; on or off"},
	{"TWILL_DNS_UPSTREAM", "dns-upstream", "", "resolvers the names resolver forwards other names to, comma-separated IP[:PORT]; empty = the nameservers of the host's /etc/resolv.conf"},
	{"TWILL_ORPHAN_AGE", "orphan-age", "2m", "an address handed out this long ago that no container uses is given back (a crash lost its answer)"},
	{"TWILL_LOG_LEVEL", "log-level", "info", "debug, info, warn or error"},
	{"TWILL_LOG_FORMAT", "log-format", "auto", "text, json, or auto (text on a terminal, JSON otherwise)"},
	{"", "plugin-dir", "/run/docker/plugins", "where twill.sock is created"},
	{"TWILL_PLUGIN_NAME", "plugin-name", "", "the driver name users give -d and --ipam-driver, for error messages; empty = twill:latest in a managed plugin, twill otherwise"},
}

// parseConfig reads settings from args (flags) and env (a lookup such as
// os.LookupEnv); a flag that is given wins over the environment.
func parseConfig(args []string, env func(string) (string, bool), usage io.Writer) (config, error) {
	fs := flag.NewFlagSet("twilld", flag.ContinueOnError)
	fs.SetOutput(usage)
	vals := make(map[string]*string, len(settings))
	for _, s := range settings {
		def := s.def
		help := s.help
		if s.env != "" {
			help += " (env " + s.env + ")"
		}
		vals[s.flag] = fs.String(s.flag, def, help)
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q: twilld takes only flags (see -h)", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })

	// value returns the flag when given, else the env when set, else the default.
	value := func(s setting) string {
		if given[s.flag] {
			return *vals[s.flag]
		}
		if s.env != "" {
			if v, ok := env(s.env); ok {
				return strings.TrimSpace(v)
			}
		}
		return s.def
	}
	get := map[string]string{}
	name := map[string]string{}
	for _, s := range settings {
		get[s.flag] = value(s)
		name[s.flag] = "--" + s.flag
		if s.env != "" {
			name[s.flag] = s.env + " (--" + s.flag + ")"
		}
	}

	var c config
	var errs []error
	bad := func(flag, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s=%q: %s", name[flag], get[flag], fmt.Sprintf(format, a...)))
	}

	for _, e := range strings.Split(get["etcd-endpoints"], ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
			bad("etcd-endpoints", "endpoint %q needs a scheme, e.g. http://10.0.0.5:2379", e)
			continue
		}
		c.EtcdEndpoints = append(c.EtcdEndpoints, e)
	}
	c.EtcdPrefix = strings.TrimRight(get["etcd-prefix"], "/")
	if !strings.HasPrefix(c.EtcdPrefix, "/") {
		bad("etcd-prefix", "must start with /, e.g. /coreos.com/network")
	}
	c.EtcdCAFile, c.EtcdCertFile, c.EtcdKeyFile = get["etcd-cafile"], get["etcd-certfile"], get["etcd-keyfile"]
	if (c.EtcdCertFile == "") != (c.EtcdKeyFile == "") {
		bad("etcd-certfile", "ETCD_CERTFILE and ETCD_KEYFILE go together; set both or neither")
	}
	if len(c.EtcdEndpoints) == 0 && (c.EtcdCAFile != "" || c.EtcdCertFile != "") {
		bad("etcd-endpoints", "TLS files are set but no endpoints; the embedded etcd has no TLS")
	}

	c.Iface = get["iface"]
	if v := get["public-ip"]; v != "" {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			bad("public-ip", "not an IPv4 address")
		}
		c.PublicIP = a
	}
	n, err := netip.ParsePrefix(get["network"])
	switch {
	case err != nil:
		bad("network", "not a prefix such as 10.96.0.0/16")
	case !n.Addr().Is4():
		bad("network", "twill overlays are IPv4")
	case n != n.Masked():
		bad("network", "host bits set; did you mean %s?", n.Masked())
	case n.Bits() > 22:
		bad("network", "too small: an overlay needs room for several /24 host subnets (use /22 or larger, e.g. /16)")
	}
	c.Network = n
	if p, err := strconv.ParseUint(get["port"], 10, 16); err != nil || p == 0 {
		bad("port", "not a UDP port number (1-65535)")
	} else {
		c.Port = uint16(p)
	}
	if v := get["mtu"]; v != "" {
		m, err := strconv.Atoi(v)
		if err != nil || m < 576 || m > 65507 {
			bad("mtu", "not an MTU between 576 and 65507 (leave it empty for underlay MTU - 28)")
		}
		c.MTU = m
	}
	switch c.Offload = get["offload"]; c.Offload {
	case "auto", "off":
	default:
		bad("offload", "want auto or off")
	}
	if d, err := time.ParseDuration(get["busy-poll"]); err != nil || d < 0 || d > overlay.MaxBusyPoll {
		bad("busy-poll", "want a duration from 0 (off) to %v, e.g. 50ms", overlay.MaxBusyPoll)
	} else {
		c.BusyPoll = d
	}
	switch c.Datapath = get["datapath"]; c.Datapath {
	case "auto", "kernel", "tun":
	default:
		bad("datapath", "want auto, kernel or tun")
	}
	if c.BPFFS = get["bpf-fs"]; c.BPFFS != "" && !filepath.IsAbs(c.BPFFS) {
		bad("bpf-fs", "must be an absolute path, or empty for none")
	}
	c.StateDir = get["state-dir"]
	if !filepath.IsAbs(c.StateDir) {
		bad("state-dir", "must be an absolute path")
	}
	c.SubnetEnv = get["subnet-env"]
	c.ControlSocket = get["control-socket"]
	if c.ControlSocket == "" {
		c.ControlSocket = filepath.Join(c.StateDir, "twill-ctl.sock")
	}
	c.MetricsAddr = get["metrics-addr"]
	if c.MetricsAddr != "" {
		if _, err := netip.ParseAddrPort(c.MetricsAddr); err != nil {
			bad("metrics-addr", "want IP:PORT such as 127.0.0.1:9586, or empty to turn metrics off")
		}
	}
	c.PluginDir = get["plugin-dir"]
	c.PluginName = get["plugin-name"]
	c.DockerSocket = get["docker-socket"]
	managed := os.Getpid() == 1 // a managed plugin runs in its own PID namespace
	if c.PluginName == "" {
		c.PluginName = "twill"
		if managed {
			c.PluginName = "twill:latest"
		}
	}
	if managed {
		c.DockerSocket = upgradedPluginSocket(c.DockerSocket, func(p string) bool { _, err := os.Stat(p); return err == nil })
	}
	switch get["names"] {
	case "on":
		c.Names = true
	case "off":
	default:
		bad("names", "want on or off")
	}
	if ups, err := names.ParseUpstreams(get["dns-upstream"]); err != nil {
		bad("dns-upstream", "%v", err)
	} else {
		c.DNSUpstream = ups
	}
	if d, err := time.ParseDuration(get["orphan-age"]); err != nil || d < time.Second {
		bad("orphan-age", "want a duration of at least 1s, e.g. 2m")
	} else {
		c.OrphanAge = d
	}
	if err := c.LogLevel.UnmarshalText([]byte(get["log-level"])); err != nil {
		bad("log-level", "want debug, info, warn or error")
	}
	switch c.LogFormat = get["log-format"]; c.LogFormat {
	case "auto", "text", "json":
	default:
		bad("log-format", "want text, json or auto")
	}
	if len(errs) > 0 {
		return config{}, fmt.Errorf("bad settings:\n  %w", joinLines(errs))
	}
	return c, nil
}

// joinLines joins errors one per line, indented, for a readable start-up failure.
func joinLines(errs []error) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "\n  "))
}

// The managed plugin's dockerd socket, in its docker-run mount of the
// host's /run. Plugins installed before that mount mounted the socket file
// itself at /run/docker.sock, and `docker plugin upgrade` keeps their
// TWILL_DOCKER_SOCKET=/run/docker.sock.
const (
	pluginDockerSocket    = "/host-run/docker.sock"
	oldPluginDockerSocket = "/run/docker.sock"
)

// upgradedPluginSocket is the socket a managed plugin follows: the old
// default moves to the docker-run mount when only that one exists.
func upgradedPluginSocket(sock string, exists func(string) bool) string {
	if sock == oldPluginDockerSocket && !exists(sock) && exists(pluginDockerSocket) {
		return pluginDockerSocket
	}
	return sock
}
