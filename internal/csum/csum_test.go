package csum

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/twill-net/twill/internal/csum/csumtest"
)

func TestAddMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 70000)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for i := range 5000 {
		n := r.IntN(200)
		if i%10 == 0 {
			n = r.IntN(len(buf))
		}
		off := r.IntN(len(buf) - n + 1) // odd offsets too: payloads need not be aligned
		b := buf[off : off+n]
		s := uint64(r.IntN(1 << 20))
		if got, want := Fold(Add(b, s)), csumtest.Sum(s, b); got != want {
			t.Fatalf("len %d off %d start %#x: Add %#04x, reference %#04x", n, off, s, got, want)
		}
	}
	// All ones: the carries of every add matter.
	ones := bytes.Repeat([]byte{0xff}, 65535)
	if got, want := Fold(Add(ones, 0xffff_ffff)), csumtest.Sum(0xffff_ffff, ones); got != want {
		t.Fatalf("all ones: %#04x, reference %#04x", got, want)
	}
}

func BenchmarkAdd64K(b *testing.B) {
	buf := make([]byte, 65536)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	b.SetBytes(int64(len(buf)))
	var s uint64
	for b.Loop() {
		s += Add(buf, 0)
	}
	_ = s
}
