package store

import (
	"sort"
	"sync"
)

// Memory is an in-process stand-in for DB with the same Submit/Load
// contract, for tests that do not exercise the disk. Submitted operations
// apply immediately and in order. FailNext makes the next Submit fail, to
// test callers' rollback.
type Memory struct {
	mu       sync.Mutex
	buckets  map[string]map[string][]byte
	failNext error
}

// NewMemory returns an empty Memory store.
func NewMemory() *Memory {
	return &Memory{buckets: map[string]map[string][]byte{}}
}

// FailNext makes the next Submit fail with err without applying anything.
func (m *Memory) FailNext(err error) {
	m.mu.Lock()
	m.failNext = err
	m.mu.Unlock()
}

// Submit applies ops at once.
func (m *Memory) Submit(ops ...Op) *Pending {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.failNext; err != nil {
		m.failNext = nil
		return finished(err)
	}
	for _, op := range ops {
		b := m.buckets[op.Bucket]
		if op.Value == nil {
			delete(b, op.Key)
			continue
		}
		if b == nil {
			b = map[string][]byte{}
			m.buckets[op.Bucket] = b
		}
		b[op.Key] = append([]byte(nil), op.Value...)
	}
	return finished(nil)
}

// Load calls fn for every key of bucket in key order.
func (m *Memory) Load(bucket string, fn func(key string, value []byte) error) error {
	m.mu.Lock()
	b := m.buckets[bucket]
	keys := make([]string, 0, len(b))
	for k := range b {
		keys = append(keys, k)
	}
	vals := make(map[string][]byte, len(b))
	for k, v := range b {
		vals[k] = v
	}
	m.mu.Unlock()
	sort.Strings(keys)
	for _, k := range keys {
		if err := fn(k, vals[k]); err != nil {
			return err
		}
	}
	return nil
}

// Len is the number of keys in bucket.
func (m *Memory) Len(bucket string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.buckets[bucket])
}
