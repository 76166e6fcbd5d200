package subnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
)

// Store remembers this host's subnet in each overlay across restarts, so a
// restarted host takes the same subnet back while it is still free, and so
// the manager can tell its own old lease from another live host that claims
// the same public IP.
type Store interface {
	// LastSubnet returns the subnet last recorded for overlay, or the zero
	// prefix when none was.
	LastSubnet(overlay netip.Prefix) (netip.Prefix, error)
	// SaveSubnet records sn as this host's subnet in overlay.
	SaveSubnet(overlay, sn netip.Prefix) error
}

// FileStore is a Store in one small JSON file, rewritten atomically:
// {"10.96.0.0/16":"10.96.7.0/24"}.
type FileStore struct {
	path string
	mu   sync.Mutex // serialises read-modify-write of the file
}

var _ Store = (*FileStore)(nil)

// NewFileStore returns a Store kept in path (e.g. /var/lib/twill/subnets.json).
func NewFileStore(path string) *FileStore { return &FileStore{path: path} }

func (s *FileStore) read() (map[netip.Prefix]netip.Prefix, error) {
	m := map[netip.Prefix]netip.Prefix{}
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", s.path, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("reading %s: %w", s.path, err)
	}
	return m, nil
}

func (s *FileStore) LastSubnet(overlay netip.Prefix) (netip.Prefix, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.read()
	if err != nil {
		return netip.Prefix{}, err
	}
	return m[overlay], nil
}

func (s *FileStore) SaveSubnet(overlay, sn netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.read()
	if err != nil {
		// A corrupt file only costs the memory of old subnets: start afresh.
		m = map[netip.Prefix]netip.Prefix{}
	}
	if m[overlay] == sn {
		return nil
	}
	m[overlay] = sn
	b, _ := json.Marshal(m)
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(s.path), err)
	}
	return writeFileAtomic(s.path, b, 0o600)
}

// MemStore is a Store in memory, for tests and for hosts without a state dir.
type MemStore struct {
	mu sync.Mutex
	m  map[netip.Prefix]netip.Prefix
}

var _ Store = (*MemStore)(nil)

func (s *MemStore) LastSubnet(overlay netip.Prefix) (netip.Prefix, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[overlay], nil
}

func (s *MemStore) SaveSubnet(overlay, sn netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[netip.Prefix]netip.Prefix{}
	}
	s.m[overlay] = sn
	return nil
}
