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

// maxDockerAPI is the newest Docker API version twill has been run against
// (Docker Engine 29's; GET /networks answers the same from 1.41 on).
const maxDockerAPI = "1.56"

// dockerNetworks lists the IDs of the networks dockerd has, through its API
// socket. It is only ever called outside a plugin request: a call inside one
// would deadlock dockerd's start.
func dockerNetworks(ctx context.Context, sock string) (map[string]bool, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	path := "/networks"
	if v := negotiateAPI(ctx, hc); v != "" {
		path = "/v" + v + "/networks"
	}
	resp, err := dockerGet(ctx, hc, path)
	if err == nil && resp.StatusCode == http.StatusBadRequest && path != "/networks" {
		// the daemon refuses that version: its own current one (unversioned) it takes
		resp.Body.Close()
		path = "/networks"
		resp, err = dockerGet(ctx, hc, path)
	}
	if err != nil {
		return nil, fmt.Errorf("docker API %s: %w", sock, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("docker API %s: GET %s: %s", sock, path, resp.Status)
	}
	var list []struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, fmt.Errorf("docker API %s: decoding %s: %w", sock, path, err)
	}
	ids := make(map[string]bool, len(list))
	for _, n := range list {
		ids[n.ID] = true
	}
	return ids, nil
}

func dockerGet(ctx context.Context, hc *http.Client, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		return nil, err
	}
	return hc.Do(req)
}

// negotiateAPI does what Docker's client does: the lower of the daemon's API
// version (GET /_ping's Api-Version header) and maxDockerAPI. Docker 20.10
// answers 1.41; Docker 29 refuses anything below 1.44. It returns "" when the
// daemon does not say, and the caller then uses unversioned paths, which the
// daemon serves at its own current version.
func negotiateAPI(ctx context.Context, hc *http.Client) string {
	resp, err := dockerGet(ctx, hc, "/_ping")
	if err != nil {
		return ""
	}
	resp.Body.Close()
	v := resp.Header.Get("Api-Version")
	if resp.StatusCode != http.StatusOK || !validAPIVersion(v) {
		return ""
	}
	if apiLess(maxDockerAPI, v) {
		return maxDockerAPI
	}
	return v
}

// validAPIVersion accepts "1.41"-style versions.
func validAPIVersion(v string) bool {
	var major, minor int
	n, err := fmt.Sscanf(v, "%d.%d", &major, &minor)
	return err == nil && n == 2 && fmt.Sprintf("%d.%d", major, minor) == v
}

// apiLess compares two valid API versions.
func apiLess(a, b string) bool {
	var am, an, bm, bn int
	fmt.Sscanf(a, "%d.%d", &am, &an)
	fmt.Sscanf(b, "%d.%d", &bm, &bn)
	return am < bm || am == bm && an < bn
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
