package subnet

import (
	"crypto/rand"
	"encoding/hex"
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
	// HostID returns a random ID for this host's state, created on first
	// use and stable after: a restart with the same state is the same host.
	HostID() (string, error)
}

func newHostID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// FileStore is a Store in one small JSON file, rewritten atomically:
// {"ID":"9f2c…","Subnets":{"10.96.0.0/16":"10.96.7.0/24"}}.
type FileStore struct {
	path string
	mu   sync.Mutex // serialises read-modify-write of the file
}

var _ Store = (*FileStore)(nil)

// NewFileStore returns a Store kept in path (e.g. /var/lib/twill/subnets.json).
func NewFileStore(path string) *FileStore { return &FileStore{path: path} }

// fileState is FileStore's file.
type fileState struct {
	ID      string                        `json:",omitempty"`
	Subnets map[netip.Prefix]netip.Prefix `json:",omitempty"`
}

func (s *FileStore) read() (fileState, error) {
	st := fileState{Subnets: map[netip.Prefix]netip.Prefix{}}
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("reading %s: %w", s.path, err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return fileState{Subnets: map[netip.Prefix]netip.Prefix{}}, fmt.Errorf("reading %s: %w", s.path, err)
	}
	if st.Subnets == nil {
		st.Subnets = map[netip.Prefix]netip.Prefix{}
	}
	return st, nil
}

func (s *FileStore) write(st fileState) error {
	b, _ := json.Marshal(st)
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(s.path), err)
	}
	return writeFileAtomic(s.path, b, 0o600)
}

func (s *FileStore) LastSubnet(overlay netip.Prefix) (netip.Prefix, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.read()
	if err != nil {
		return netip.Prefix{}, err
	}
	return st.Subnets[overlay], nil
}

func (s *FileStore) SaveSubnet(overlay, sn netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A corrupt file only costs the memory of old subnets: start afresh.
	st, _ := s.read()
	if st.Subnets[overlay] == sn {
		return nil
	}
	st.Subnets[overlay] = sn
	return s.write(st)
}

func (s *FileStore) HostID() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.read()
	if err == nil && st.ID != "" {
		return st.ID, nil
	}
	st.ID = newHostID()
	if err := s.write(st); err != nil {
		return "", err
	}
	return st.ID, nil
}

// MemStore is a Store in memory, for tests and for hosts without a state dir.
type MemStore struct {
	mu sync.Mutex
	m  map[netip.Prefix]netip.Prefix
	id string
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

func (s *MemStore) HostID() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.id == "" {
		s.id = newHostID()
	}
	return s.id, nil
}
