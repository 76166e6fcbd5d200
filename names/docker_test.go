package names

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
)

// inspect29 is `docker inspect` of a compose container on Engine 29 (API
// 1.56, with DNSNames), cut to what twill reads; the second network is not
// twill's, the third has no address (stopped endpoint).
const inspect29 = `{
 "Id": "3f2a9c0e1b7d55aa", "Name": "/proj-web-1",
 "State": {"Running": true},
 "NetworkSettings": {"Networks": {
   "proj_blue": {"NetworkID": "nblue", "EndpointID": "ep1", "IPAddress": "10.96.3.5",
                 "Aliases": ["proj-web-1", "web"], "DNSNames": ["proj-web-1", "web", "3f2a9c0e1b7d"]},
   "bridge":    {"NetworkID": "nbridge", "EndpointID": "ep2", "IPAddress": "172.17.0.2"},
   "proj_red":  {"NetworkID": "nred", "EndpointID": "", "IPAddress": ""}
 }}}`

// inspect20 is the same on Engine 20.10 (API 1.41): no DNSNames, the short
// ID among the aliases.
const inspect20 = `{
 "Id": "3f2a9c0e1b7d55aa", "Name": "/proj_web_1",
 "State": {"Running": true},
 "NetworkSettings": {"Networks": {
   "proj_blue": {"NetworkID": "nblue", "EndpointID": "ep1", "IPAddress": "10.96.3.5", "Aliases": ["web", "3f2a9c0e1b7d"]}
 }}}`

func dockerRecords(t *testing.T, js string) []Record {
	t.Helper()
	var c container.InspectResponse
	if err := json.Unmarshal([]byte(js), &c); err != nil {
		t.Fatal(err)
	}
	d := &Docker{Host: "192.0.2.1", IsTwill: func(id string) bool { return id != "nbridge" }}
	return d.records(c)
}

func TestDockerRecords(t *testing.T) {
	for _, c := range []struct {
		name, js string
		names    []string
	}{
		{"engine 29", inspect29, []string{"proj-web-1", "web", "3f2a9c0e1b7d"}},
		{"engine 20.10", inspect20, []string{"proj_web_1", "web", "3f2a9c0e1b7d"}},
	} {
		recs := dockerRecords(t, c.js)
		if len(recs) != 1 {
			t.Fatalf("%s: %+v", c.name, recs)
		}
		r := recs[0]
		if r.Network != "proj_blue" || r.Endpoint != "ep1" || r.Addr.String() != "10.96.3.5" || r.Host != "192.0.2.1" || !slices.Equal(r.Names, c.names) {
			t.Fatalf("%s: %+v", c.name, r)
		}
	}
	var stopped container.InspectResponse
	json.Unmarshal([]byte(inspect29), &stopped)
	stopped.State.Running = false
	if recs := (&Docker{}).records(stopped); len(recs) != 0 {
		t.Fatalf("a stopped container has names: %+v", recs)
	}
}

func TestEventContainer(t *testing.T) {
	for _, c := range []struct {
		m    events.Message
		want string
	}{
		{events.Message{Type: events.ContainerEventType, Action: events.ActionStart, Actor: events.Actor{ID: "c1"}}, "c1"},
		{events.Message{Type: events.ContainerEventType, Action: events.ActionRename, Actor: events.Actor{ID: "c1"}}, "c1"},
		{events.Message{Type: events.ContainerEventType, Action: events.ActionExecStart, Actor: events.Actor{ID: "c1"}}, ""},
		{events.Message{Type: events.NetworkEventType, Action: events.ActionConnect, Actor: events.Actor{ID: "n1", Attributes: map[string]string{"container": "c2"}}}, "c2"},
		{events.Message{Type: events.NetworkEventType, Action: events.ActionCreate, Actor: events.Actor{ID: "n1"}}, ""},
	} {
		if got := eventContainer(c.m); got != c.want {
			t.Errorf("%s %s: %q, want %q", c.m.Type, c.m.Action, got, c.want)
		}
	}
}

// FuzzDockerInspect: whatever dockerd (or something on its socket) answers
// to an inspect, the records made of it are publishable and readable back.
func FuzzDockerInspect(f *testing.F) {
	f.Add([]byte(inspect29))
	f.Add([]byte(inspect20))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c container.InspectResponse
		if json.Unmarshal(b, &c) != nil {
			return
		}
		d := &Docker{Host: "192.0.2.1"}
		for _, r := range d.records(c) {
			if r.Endpoint == "" || !r.Addr.Is4() {
				t.Fatalf("unusable record %+v", r)
			}
			if _, err := ParseRecord(NamesDir("/p"), r.Key("/p"), r.Marshal()); err != nil {
				t.Fatalf("record %+v does not read back: %v", r, err)
			}
		}
	})
}
