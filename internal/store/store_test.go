package store

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func open(t *testing.T, dir string) *DB {
	t.Helper()
	db, err := Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func load(t *testing.T, s interface {
	Load(string, func(string, []byte) error) error
}, bucket string) map[string]string {
	t.Helper()
	got := map[string]string{}
	if err := s.Load(bucket, func(k string, v []byte) error {
		got[k] = string(v)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestSurvivesReopenAndAppliesInOrder(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	if err := db.Submit(Op{"b", "k1", []byte("v1")}, Op{"b", "k2", []byte("v2")}).Wait(); err != nil {
		t.Fatal(err)
	}
	// Later ops win over earlier ones, also across Submits in one batch.
	p1 := db.Submit(Op{"b", "k1", nil})
	p2 := db.Submit(Op{"b", "k1", []byte("again")}, Op{"gone", "x", nil})
	if err := errors.Join(p1.Wait(), p2.Wait()); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Submit(Op{"b", "k3", []byte("v3")}).Wait(); !errors.Is(err, ErrClosed) {
		t.Fatalf("submit after close: got %v, want ErrClosed", err)
	}
	db2 := open(t, dir)
	got := load(t, db2, "b")
	want := map[string]string{"k1": "again", "k2": "v2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after reopen got %v, want %v", got, want)
	}
	if n := len(load(t, db2, "never-written")); n != 0 {
		t.Fatalf("absent bucket has %d keys", n)
	}
	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	open(t, dir)
	_, err := Open(dir, quiet())
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: got %v, want ErrLocked", err)
	}
}

func TestConcurrentSubmitsAllDurable(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := db.Submit(Op{"c", fmt.Sprint(i), []byte{byte(i)}}).Wait(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	db.Close()
	if n := len(load(t, open(t, dir), "c")); n != 200 {
		t.Fatalf("after reopen %d keys, want 200", n)
	}
}

func TestMemoryMatchesContract(t *testing.T) {
	m := NewMemory()
	m.Submit(Op{"b", "k", []byte("v")}, Op{"b", "z", []byte("w")})
	m.Submit(Op{"b", "z", nil})
	boom := errors.New("disk full")
	m.FailNext(boom)
	if err := m.Submit(Op{"b", "q", []byte("x")}).Wait(); !errors.Is(err, boom) {
		t.Fatalf("FailNext: got %v", err)
	}
	if got := load(t, m, "b"); fmt.Sprint(got) != "map[k:v]" {
		t.Fatalf("got %v", got)
	}
}
