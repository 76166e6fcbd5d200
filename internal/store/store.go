// Package store owns twill's local state file: the crash-safe record of IPAM
// pools and address allocations, networks and endpoints that must survive a
// kill -9 of the plugin (Docker restarts it within a second and replays
// nothing).
//
// The state lives in one bbolt file (<dir>/state.db, mode 0600). bbolt
// commits with fdatasync and its own copy-on-write pages, so a commit either
// happened completely or not at all. The file is flock()ed while open, so a
// second twilld on the same state directory refuses to start (ErrLocked).
//
// Writers call Submit, which queues the operations in FIFO order and returns
// at once; Wait blocks until they are on disk. One committer goroutine writes
// everything queued so far in a single transaction (group commit), so many
// concurrent requests share one fsync while each is still answered only
// after its own change is durable.
package store

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrLocked means another process holds the state directory.
var ErrLocked = errors.New("state directory is in use by another twilld")

// ErrClosed is returned by operations submitted after Close.
var ErrClosed = errors.New("state store is closed")

// FileName is the name of the state file inside the state directory.
const FileName = "state.db"

// Op is one change: put Value under Key in Bucket, or delete Key when Value
// is nil. Deleting an absent key is success.
type Op struct {
	Bucket string
	Key    string
	Value  []byte
}

// Pending is the outcome of a Submit.
type Pending struct {
	done chan struct{}
	err  error
}

// Wait blocks until the submitted operations are on disk (nil) or failed.
// It may be called any number of times.
func (p *Pending) Wait() error {
	<-p.done
	return p.err
}

func finished(err error) *Pending {
	p := &Pending{done: make(chan struct{}), err: err}
	close(p.done)
	return p
}

type request struct {
	ops []Op
	p   *Pending
}

// DB is the on-disk store.
type DB struct {
	log  *slog.Logger
	db   *bolt.DB
	path string

	mu     sync.Mutex // guards queue and closed
	queue  []request
	closed bool

	wake chan struct{} // capacity 1: "queue is not empty"
	stop chan struct{}
	done chan struct{} // closed when the committer has exited
}

// Open opens (creating if needed) the state in dir. It fails with ErrLocked
// when another process has it open.
func Open(dir string, log *slog.Logger) (*DB, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 200 * time.Millisecond})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("opening %s: %w (stop the other twilld or use another --state-dir)", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	// bolt.Open honours mode only when it creates the file.
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, fmt.Errorf("restricting %s to 0600: %w", path, err)
	}
	s := &DB{
		log:  log,
		db:   db,
		path: path,
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go s.commitLoop()
	return s, nil
}

// Path is the state file's path.
func (s *DB) Path() string { return s.path }

// Submit queues ops to be written in one transaction after everything
// submitted before. Callers that need ordering between their changes submit
// while holding their own lock and Wait after releasing it.
func (s *DB) Submit(ops ...Op) *Pending {
	if len(ops) == 0 {
		return finished(nil)
	}
	p := &Pending{done: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return finished(ErrClosed)
	}
	s.queue = append(s.queue, request{ops: ops, p: p})
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return p
}

// Load calls fn for every key of bucket in key order. A bucket that does
// not exist yet has no keys. value is only valid during the call.
func (s *DB) Load(bucket string, fn func(key string, value []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if v == nil { // nested bucket: not ours
				return nil
			}
			return fn(string(k), v)
		})
	})
}

// Close writes what is queued, stops the committer and closes the file.
func (s *DB) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	return s.db.Close()
}

func (s *DB) commitLoop() {
	defer close(s.done)
	for {
		select {
		case <-s.wake:
			s.commitQueued()
		case <-s.stop:
			s.commitQueued()
			return
		}
	}
}

// commitQueued writes every queued request in one transaction. When the
// transaction fails, every request in it fails.
func (s *DB) commitQueued() {
	s.mu.Lock()
	batch := s.queue
	s.queue = nil
	s.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, r := range batch {
			for _, op := range r.ops {
				if err := apply(tx, op); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("writing %s: %w", s.path, err)
		s.log.Error("state commit failed", "ops", len(batch), "err", err)
	}
	for _, r := range batch {
		r.p.err = err
		close(r.p.done)
	}
}

func apply(tx *bolt.Tx, op Op) error {
	if op.Value == nil {
		b := tx.Bucket([]byte(op.Bucket))
		if b == nil {
			return nil
		}
		if err := b.Delete([]byte(op.Key)); err != nil {
			return fmt.Errorf("deleting %s/%s: %w", op.Bucket, op.Key, err)
		}
		return nil
	}
	b, err := tx.CreateBucketIfNotExists([]byte(op.Bucket))
	if err != nil {
		return fmt.Errorf("creating bucket %s: %w", op.Bucket, err)
	}
	if err := b.Put([]byte(op.Key), op.Value); err != nil {
		return fmt.Errorf("putting %s/%s: %w", op.Bucket, op.Key, err)
	}
	return nil
}
