package names

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
)

// Docker learns this host's endpoints on twill networks from dockerd's API
// socket: it subscribes to container and network events, then lists and
// inspects every running container (a full resync after every connect and
// reconnect), and inspects a container again on each of its events. It
// runs on its own goroutine and never inside a plugin request: dockerd
// waits for its plugins during its own start, so a call made while
// answering one would deadlock it.
type Docker struct {
	Socket string // dockerd's API socket, e.g. /run/docker.sock
	Host   string // this host's public IP, the Host of its records
	// IsTwill says whether a Docker network ID is one of twill's.
	IsTwill func(networkID string) bool
	// Update receives the host's complete set of records after every change.
	Update func([]Record)
	Log    *slog.Logger
	// Retry is the pause before reconnecting; 0 = 1 s.
	Retry time.Duration

	byContainer map[string][]Record
}

// Run follows dockerd until ctx ends, reconnecting after any failure.
func (d *Docker) Run(ctx context.Context) {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	retry := d.Retry
	if retry == 0 {
		retry = time.Second
	}
	cli, err := client.NewClientWithOpts(client.WithHost("unix://"+d.Socket), client.WithAPIVersionNegotiation())
	if err != nil {
		d.Log.Error("Docker API client; names of this host's containers are not published", "socket", d.Socket, "err", err)
		return
	}
	defer cli.Close()
	quiet := false
	for ctx.Err() == nil {
		err := d.session(ctx, cli)
		if ctx.Err() != nil {
			return
		}
		if !quiet {
			d.Log.Warn("following dockerd for container names; reconnecting", "socket", d.Socket, "err", err)
		}
		quiet = true // dockerd may be down for long: say so once until it is back
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}

// session subscribes to events, resyncs, then applies events until the
// stream fails.
func (d *Docker) session(ctx context.Context, cli *client.Client) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := cli.Ping(sctx); err != nil {
		return err
	}
	cli.NegotiateAPIVersion(sctx)
	f := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)), filters.Arg("type", string(events.NetworkEventType)))
	msgs, errs := cli.Events(sctx, events.ListOptions{Filters: f})
	if err := d.resync(sctx, cli); err != nil {
		return err
	}
	d.Log.Info("following dockerd for container names", "api_version", cli.ClientVersion(), "containers", len(d.byContainer))
	for {
		select {
		case err := <-errs:
			return err
		case m := <-msgs:
			id := eventContainer(m)
			if id == "" {
				continue
			}
			if err := d.refresh(sctx, cli, id); err != nil {
				return err
			}
			d.emit()
		}
	}
}

// eventContainer is the container an event concerns, or "" for events that
// change no names.
func eventContainer(m events.Message) string {
	switch m.Type {
	case events.ContainerEventType:
		switch m.Action {
		case events.ActionStart, events.ActionDie, events.ActionStop, events.ActionKill, events.ActionDestroy,
			events.ActionRename, events.ActionPause, events.ActionUnPause, events.ActionRestart:
			return m.Actor.ID
		}
	case events.NetworkEventType:
		if m.Action == events.ActionConnect || m.Action == events.ActionDisconnect {
			return m.Actor.Attributes["container"]
		}
	}
	return ""
}

// resync replaces everything known with what dockerd reports now.
func (d *Docker) resync(ctx context.Context, cli *client.Client) error {
	list, err := cli.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing containers: %w", err)
	}
	d.byContainer = map[string][]Record{}
	for _, c := range list {
		if err := d.refresh(ctx, cli, c.ID); err != nil {
			return err
		}
	}
	d.emit()
	return nil
}

// refresh inspects one container and replaces its records.
func (d *Docker) refresh(ctx context.Context, cli *client.Client, id string) error {
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := cli.ContainerInspect(ictx, id)
	if errdefs.IsNotFound(err) {
		delete(d.byContainer, id)
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspecting container %s: %w", id, err)
	}
	recs := d.records(c)
	if len(recs) == 0 {
		delete(d.byContainer, id)
	} else {
		d.byContainer[id] = recs
	}
	return nil
}

// records are the names a running container has on twill networks, as
// Docker's own resolver would answer them: its name, its aliases and, on
// engines that report them (API 1.44+), its DNS names.
func (d *Docker) records(c container.InspectResponse) []Record {
	if c.ContainerJSONBase == nil || c.State == nil || !c.State.Running || c.NetworkSettings == nil {
		return nil
	}
	var out []Record
	for _, nw := range slices.Sorted(maps.Keys(c.NetworkSettings.Networks)) {
		ep := c.NetworkSettings.Networks[nw]
		// An endpoint ID becomes a key segment: Docker's are hex, and
		// anything with a slash would land in another key.
		if ep == nil || nw == "" || ep.EndpointID == "" || strings.Contains(ep.EndpointID, "/") || (d.IsTwill != nil && !d.IsTwill(ep.NetworkID)) {
			continue
		}
		a, err := netip.ParseAddr(ep.IPAddress)
		if err != nil || !a.Is4() {
			continue
		}
		var names []string
		add := func(n string) {
			if n != "" && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
		add(strings.TrimPrefix(c.Name, "/"))
		for _, n := range ep.Aliases {
			add(n)
		}
		for _, n := range ep.DNSNames {
			add(n)
		}
		out = append(out, Record{Host: d.Host, Endpoint: ep.EndpointID, Network: nw, Container: c.ID, Names: names, Addr: a})
	}
	return out
}

func (d *Docker) emit() {
	if d.Update == nil {
		return
	}
	var all []Record
	for _, id := range slices.Sorted(maps.Keys(d.byContainer)) {
		all = append(all, d.byContainer[id]...)
	}
	d.Update(all)
}
