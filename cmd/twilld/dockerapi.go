package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	netapi "github.com/docker/go-plugins-helpers/network"
)

// dockerNetworks lists the IDs of the networks dockerd has, through its API
// socket. It is only ever called outside a plugin request: a call inside one
// would deadlock dockerd's start.
func dockerNetworks(ctx context.Context, sock string) (map[string]bool, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/networks", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("docker API %s: %w", sock, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("docker API %s: GET /networks: %s", sock, resp.Status)
	}
	var list []struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, fmt.Errorf("docker API %s: decoding /networks: %w", sock, err)
	}
	ids := make(map[string]bool, len(list))
	for _, n := range list {
		ids[n.ID] = true
	}
	return ids, nil
}

// reconcileWithDocker removes the networks that dockerd no longer has: they
// were deleted while twill could not answer (`docker plugin disable -f`),
// so their DeleteNetwork and ReleasePool never arrived. It waits for the
// Docker API (dockerd answers it only once its own start is done) and acts
// only when dockerd still lists at least one twill network, the proof that
// the socket is this host's dockerd and not another daemon's.
func (n *node) reconcileWithDocker(ctx context.Context) {
	sock := n.cfg.DockerSocket
	if sock == "" {
		return
	}
	if _, err := os.Stat(sock); err != nil {
		n.log.Debug("no Docker API socket; networks removed while twill was disabled stay until removed here", "socket", sock)
		return
	}
	ours := n.drv.Networks()
	if len(ours) == 0 {
		return
	}
	var have map[string]bool
	for attempt := 0; ; attempt++ {
		var err error
		if have, err = dockerNetworks(ctx, sock); err == nil {
			break
		}
		if attempt == 60 {
			n.log.Warn("Docker API unreachable; skipping the network reconciliation", "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
	known := false
	for _, nw := range ours {
		known = known || have[nw.ID]
	}
	if !known {
		n.log.Warn("dockerd lists none of twill's networks; not removing any (is the Docker socket this host's dockerd?)", "socket", sock, "networks", len(ours))
		return
	}
	for _, nw := range n.drv.Networks() {
		if have[nw.ID] {
			continue
		}
		if err := n.drv.DeleteNetwork(ctx, &netapi.DeleteNetworkRequest{NetworkID: nw.ID}); err != nil {
			n.log.Warn("removing a network dockerd no longer has", "network", nw.ID, "err", err)
			continue
		}
		if err := n.ipam.Forget(ctx, nw.Subnet); err != nil {
			n.log.Warn("forgetting the pool of a removed network", "network", nw.ID, "subnet", nw.Subnet, "err", err)
		}
		n.log.Info("removed a network dockerd deleted while twill was down", "network", nw.ID, "bridge", nw.Bridge, "subnet", nw.Subnet)
	}
}
