package main

import (
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, envOf(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.EtcdPrefix != "/coreos.com/network" || c.Port != 8285 || c.Network != netip.MustParsePrefix("10.96.0.0/16") {
		t.Errorf("defaults: %+v", c)
	}
	if len(c.EtcdEndpoints) != 0 || c.StateDir != "/var/lib/twill" || c.MetricsAddr != "127.0.0.1:9586" || c.PluginDir != "/run/docker/plugins" {
		t.Errorf("defaults: %+v", c)
	}
	if c.ControlSocket != "/var/lib/twill/twill-ctl.sock" {
		t.Errorf("control socket %q", c.ControlSocket)
	}
	if c.BusyPoll != 0 || c.Offload != "auto" {
		t.Errorf("busy poll %v, offload %q: want off and auto", c.BusyPoll, c.Offload)
	}
	if c, err := parseConfig(nil, envOf(map[string]string{"TWILL_BUSY_POLL": "50ms"}), io.Discard); err != nil || c.BusyPoll != 50*time.Millisecond {
		t.Errorf("TWILL_BUSY_POLL=50ms: %v, %v", c.BusyPoll, err)
	}
}

func TestConfigFlagWinsOverEnv(t *testing.T) {
	env := envOf(map[string]string{"TWILL_PORT": "9000", "ETCD_ENDPOINTS": "http://10.0.0.5:2379, http://10.0.0.6:2379", "TWILL_MTU": "1400"})
	c, err := parseConfig([]string{"--port", "9100"}, env, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 9100 {
		t.Errorf("port %d, want the flag's 9100", c.Port)
	}
	if c.MTU != 1400 {
		t.Errorf("mtu %d, want the env's 1400", c.MTU)
	}
	if len(c.EtcdEndpoints) != 2 || c.EtcdEndpoints[1] != "http://10.0.0.6:2379" {
		t.Errorf("endpoints %q", c.EtcdEndpoints)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"TWILL_NETWORK": "10.96.0.1/16"}, nil, `TWILL_NETWORK (--network)="10.96.0.1/16": host bits set; did you mean 10.96.0.0/16?`},
		{map[string]string{"TWILL_NETWORK": "banana"}, nil, "TWILL_NETWORK"},
		{map[string]string{"TWILL_NETWORK": "10.96.0.0/24"}, nil, "too small"},
		{map[string]string{"TWILL_PORT": "70000"}, nil, "TWILL_PORT"},
		{map[string]string{"ETCD_ENDPOINTS": "10.0.0.5:2379"}, nil, "needs a scheme"},
		{map[string]string{"TWILL_PUBLIC_IP": "::1"}, nil, "TWILL_PUBLIC_IP"},
		{map[string]string{"TWILL_MTU": "99999"}, nil, "TWILL_MTU"},
		{map[string]string{"TWILL_BUSY_POLL": "50"}, nil, `TWILL_BUSY_POLL (--busy-poll)="50": want a duration from 0 (off) to 10s, e.g. 50ms`},
		{map[string]string{"TWILL_BUSY_POLL": "-1ms"}, nil, "TWILL_BUSY_POLL"},
		{nil, []string{"--busy-poll", "1m"}, "--busy-poll"},
		{map[string]string{"ETCD_CERTFILE": "/x.pem"}, nil, "go together"},
		{map[string]string{"TWILL_LOG_LEVEL": "loud"}, nil, "TWILL_LOG_LEVEL"},
		{map[string]string{"TWILL_STATE_DIR": "var/lib"}, nil, "absolute"},
		{nil, []string{"--metrics-addr", "localhost"}, "--metrics-addr"},
		{nil, []string{"extra"}, "unexpected argument"},
	} {
		_, err := parseConfig(tc.args, envOf(tc.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("env %v args %v: error %v, want it to contain %q", tc.env, tc.args, err, tc.want)
		}
	}
}

func TestConfigReportsEveryProblemAtOnce(t *testing.T) {
	_, err := parseConfig(nil, envOf(map[string]string{"TWILL_PORT": "x", "TWILL_MTU": "x"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "TWILL_PORT") || !strings.Contains(err.Error(), "TWILL_MTU") {
		t.Fatalf("error %v should name both settings", err)
	}
}

// A plugin upgraded from a version that mounted the socket file keeps
// TWILL_DOCKER_SOCKET=/run/docker.sock; it follows the docker-run mount's
// socket when only that exists, and any other setting stays as set.
func TestUpgradedPluginSocket(t *testing.T) {
	for _, c := range []struct {
		sock  string
		exist []string
		want  string
	}{
		{"/run/docker.sock", []string{pluginDockerSocket}, pluginDockerSocket},
		{"/run/docker.sock", []string{"/run/docker.sock", pluginDockerSocket}, "/run/docker.sock"},
		{"/run/docker.sock", nil, "/run/docker.sock"},
		{pluginDockerSocket, []string{pluginDockerSocket}, pluginDockerSocket},
		{"/host-run/other.sock", []string{pluginDockerSocket}, "/host-run/other.sock"},
		{"", []string{pluginDockerSocket}, ""},
	} {
		exists := func(p string) bool { return slices.Contains(c.exist, p) }
		if got := upgradedPluginSocket(c.sock, exists); got != c.want {
			t.Errorf("socket %q with %v present: %q, want %q", c.sock, c.exist, got, c.want)
		}
	}
}
