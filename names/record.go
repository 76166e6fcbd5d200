package names

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// Record is one container endpoint's names on one twill network.
type Record struct {
	Host      string     // the publishing host's public IP (from the key)
	Endpoint  string     // Docker's endpoint ID (from the key)
	Network   string     // the Docker network's name
	Container string     // the container's ID
	Names     []string   // container name, aliases, DNS names, as Docker reports them
	Addr      netip.Addr // the endpoint's IPv4 address
}

// recordJSON is a record's value in etcd.
type recordJSON struct {
	Network   string
	Container string `json:",omitempty"`
	Names     []string
	IPv4      string
}

// NamesDir is the directory of name records under an overlay's prefix.
func NamesDir(overlayPrefix string) string { return overlayPrefix + "/names/" }

// HostDir is the directory of one host's name records.
func HostDir(overlayPrefix, host string) string { return NamesDir(overlayPrefix) + host + "/" }

// Key is where r lives under overlayPrefix.
func (r Record) Key(overlayPrefix string) string { return HostDir(overlayPrefix, r.Host) + r.Endpoint }

// Marshal is r's value in etcd.
func (r Record) Marshal() []byte {
	b, _ := json.Marshal(recordJSON{Network: r.Network, Container: r.Container, Names: r.Names, IPv4: r.Addr.String()})
	return b
}

// Equal says whether two records publish the same thing.
func (r Record) Equal(o Record) bool {
	if r.Host != o.Host || r.Endpoint != o.Endpoint || r.Network != o.Network || r.Container != o.Container || r.Addr != o.Addr || len(r.Names) != len(o.Names) {
		return false
	}
	for i := range r.Names {
		if r.Names[i] != o.Names[i] {
			return false
		}
	}
	return true
}

// ParseRecord reads the record at key (under dir, a NamesDir) from its
// value. Other writers may have put anything there: what is not a record
// is an error naming the key.
func ParseRecord(dir, key string, value []byte) (Record, error) {
	rest, ok := strings.CutPrefix(key, dir)
	host, ep, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || host == "" || ep == "" || strings.Contains(ep, "/") {
		return Record{}, fmt.Errorf("name record %s: key is not %s<host>/<endpoint>", key, dir)
	}
	var j recordJSON
	if err := json.Unmarshal(value, &j); err != nil {
		return Record{}, fmt.Errorf("name record %s: %w", key, err)
	}
	a, err := netip.ParseAddr(j.IPv4)
	if err != nil || !a.Is4() {
		return Record{}, fmt.Errorf("name record %s: IPv4 %q is not an IPv4 address", key, j.IPv4)
	}
	if j.Network == "" {
		return Record{}, fmt.Errorf("name record %s: no Network", key)
	}
	return Record{Host: host, Endpoint: ep, Network: j.Network, Container: j.Container, Names: j.Names, Addr: a}, nil
}

// lookupName is the form a name is matched in: lower case, no trailing dot.
// It reports false for a name no DNS query can ask for (Docker allows
// names such as "a_b", which DNS can carry, but a label over 63 bytes or a
// name over 253 cannot be queried): those are skipped, as Docker's own
// resolver can never be asked for them either.
func lookupName(name string) (string, bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" || len(name) > 253 {
		return "", false
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return "", false
	}
	for _, l := range strings.Split(name, ".") {
		if l == "" || len(l) > 63 {
			return "", false
		}
	}
	return name, true
}
