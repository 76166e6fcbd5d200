package names

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Table holds the name records of one overlay, every host's, indexed for
// the resolver. It is safe for concurrent use: one Watcher writes, many
// queries read.
type Table struct {
	mu     sync.RWMutex
	recs   map[string]Record                           // by etcd key
	byName map[string]map[string]map[string]netip.Addr // network -> name -> key -> address
	bySrc  map[netip.Addr]map[string]string            // address -> key -> network
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{recs: map[string]Record{}, byName: map[string]map[string]map[string]netip.Addr{}, bySrc: map[netip.Addr]map[string]string{}}
}

// networkKey is how network names are compared: Docker network names are
// matched across hosts as they are, but a query ("web.blue") is lower case.
func networkKey(n string) string { return strings.ToLower(n) }

// Put adds or replaces the record at key; it reports whether anything changed.
func (t *Table) Put(key string, r Record) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.recs[key]; ok {
		if old.Equal(r) {
			return false
		}
		t.removeLocked(key, old)
	}
	t.recs[key] = r
	nw := networkKey(r.Network)
	names := t.byName[nw]
	if names == nil {
		names = map[string]map[string]netip.Addr{}
		t.byName[nw] = names
	}
	for _, n := range r.Names {
		ln, ok := lookupName(n)
		if !ok {
			continue
		}
		if names[ln] == nil {
			names[ln] = map[string]netip.Addr{}
		}
		names[ln][key] = r.Addr
	}
	if t.bySrc[r.Addr] == nil {
		t.bySrc[r.Addr] = map[string]string{}
	}
	t.bySrc[r.Addr][key] = nw
	return true
}

// Delete removes the record at key; it reports whether there was one.
func (t *Table) Delete(key string) (Record, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old, ok := t.recs[key]
	if ok {
		t.removeLocked(key, old)
		delete(t.recs, key)
	}
	return old, ok
}

func (t *Table) removeLocked(key string, r Record) {
	nw := networkKey(r.Network)
	names := t.byName[nw]
	for _, n := range r.Names {
		ln, ok := lookupName(n)
		if !ok || names == nil {
			continue
		}
		delete(names[ln], key)
		if len(names[ln]) == 0 {
			delete(names, ln)
		}
	}
	if len(names) == 0 {
		delete(t.byName, nw)
	}
	delete(t.bySrc[r.Addr], key)
	if len(t.bySrc[r.Addr]) == 0 {
		delete(t.bySrc, r.Addr)
	}
}

// Keys lists the keys held, for a resync to find what vanished.
func (t *Table) Keys() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	keys := make([]string, 0, len(t.recs))
	for k := range t.recs {
		keys = append(keys, k)
	}
	return keys
}

// Records returns every record, sorted by network, first name and address.
func (t *Table) Records() []Record {
	t.mu.RLock()
	out := make([]Record, 0, len(t.recs))
	for _, r := range t.recs {
		out = append(out, r)
	}
	t.mu.RUnlock()
	slices.SortFunc(out, func(a, b Record) int {
		if c := strings.Compare(a.Network, b.Network); c != 0 {
			return c
		}
		if c := slices.Compare(a.Names, b.Names); c != 0 {
			return c
		}
		return a.Addr.Compare(b.Addr)
	})
	return out
}

// Len is the number of records.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.recs)
}

// held returns the addresses of name (a lookupName) among names, network
// nw's, asked as name or as name.nw (as Docker's resolver allows).
func held(names map[string]map[string]netip.Addr, nw, name string) (map[string]netip.Addr, bool) {
	if set, ok := names[name]; ok {
		return set, true
	}
	if n := len(name) - len(nw) - 1; n > 0 && name[n] == '.' && name[n+1:] == nw {
		set, ok := names[name[:n]]
		return set, ok
	}
	return nil, false
}

// mayHold reports whether name (lower case, no final dot) is a name of any
// network, or name.network of one: when it is not, no querier can get a
// twill answer for it.
func (t *Table) mayHold(name string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for nw, names := range t.byName {
		if _, ok := held(names, nw, name); ok {
			return true
		}
	}
	return false
}

// Lookup returns the addresses name (a lookupName) has for a querier: a
// container sees the names of the networks its address is on; the host
// (anyHost) sees every network's. "web.blue" asks for web on network blue,
// as Docker's resolver allows. known is false when the name is not a twill
// name for this querier; the addresses come in a fresh slice.
func (t *Table) Lookup(src netip.Addr, anyHost bool, name string) (addrs []netip.Addr, known bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	look := func(nw string) {
		set, ok := held(t.byName[nw], nw, name)
		if !ok {
			return
		}
		known = true
		for _, a := range set {
			addrs = append(addrs, a)
		}
	}
	if anyHost {
		for nw := range t.byName {
			look(nw)
		}
	} else {
		for _, nw := range t.bySrc[src] {
			look(nw)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs), known
}
