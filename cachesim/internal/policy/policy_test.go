package policy

import (
	"math/rand/v2"
	"testing"

	"github.com/tiercache/tiercache/cachesim/internal/trace"
)

func TestFIFO(t *testing.T) {
	tests := []struct {
		name     string
		capacity int
		keys     []uint64
		want     []bool // hit per access
	}{
		{"fill then hit", 2, []uint64{1, 2, 1, 2}, []bool{false, false, true, true}},
		// A hit does not refresh 1: it is still the first in, so 3 evicts it.
		{"hit does not reorder", 2, []uint64{1, 2, 1, 3, 1, 2}, []bool{false, false, true, false, false, false}},
		{"evicts oldest", 3, []uint64{1, 2, 3, 4, 2, 3, 4, 1}, []bool{false, false, false, false, true, true, true, false}},
		{"capacity one", 1, []uint64{5, 5, 6, 5}, []bool{false, true, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFIFO(tt.capacity)
			for i, k := range tt.keys {
				if got := f.Access(k); got != tt.want[i] {
					t.Errorf("access %d: Access(%d) = %v, want %v", i, k, got, tt.want[i])
				}
			}
		})
	}
}

// TestFIFOAgainstLRUOnScan checks the difference between FIFO and LRU: with
// one key touched between each insertion, LRU keeps it and FIFO does not.
func TestFIFOAgainstLRUOnScan(t *testing.T) {
	var keys []uint64
	for k := uint64(100); k < 120; k++ {
		keys = append(keys, 1, k)
	}
	count := func(p Policy) (hits int) {
		defer p.Close()
		for _, k := range keys {
			if p.Access(k) {
				hits++
			}
		}
		return hits
	}
	if got, want := count(NewLRU(3)), 19; got != want {
		t.Errorf("LRU hits = %d, want %d", got, want)
	}
	// FIFO evicts 1 every third insertion and misses it once after that.
	if got, want := count(NewFIFO(3)), 13; got != want {
		t.Errorf("FIFO hits = %d, want %d", got, want)
	}
}

// TestRegisteredPolicies replays a small skewed trace through every
// registered policy and checks that none beats Optimal.
func TestRegisteredPolicies(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 0))
	keys := make([]uint64, 20_000)
	for i := range keys {
		// Roughly skewed: small keys are much more likely.
		keys[i] = uint64(rng.IntN(1 + rng.IntN(2000)))
	}
	const capacity = 100
	opt := optimalHits(keys, capacity)
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			newPolicy, err := Lookup(name)
			if err != nil {
				t.Fatal(err)
			}
			p := newPolicy(capacity)
			defer p.Close()
			if c, ok := p.(Clairvoyant); ok {
				c.Prepare(keys)
			}
			hits := 0
			for _, k := range keys {
				if p.Access(k) {
					hits++
				}
			}
			if hits > opt {
				t.Errorf("%s hits = %d, more than Optimal's %d", name, hits, opt)
			}
			if name != "ristretto" && hits == 0 {
				t.Errorf("%s hits = 0 on a skewed trace", name)
			}
		})
	}
}

func TestLookupUnknown(t *testing.T) {
	if _, err := Lookup("no-such-policy"); err == nil {
		t.Error(`Lookup("no-such-policy") succeeded, want an error`)
	}
}

// TestLoopDefeatsFIFO replays the loop trace: each loop key comes back
// after 1.5 × capacity other loop keys, so FIFO and LRU must never hit one,
// while Optimal keeps part of the loop.
func TestLoopDefeatsFIFO(t *testing.T) {
	const capacity = 1000
	keys := trace.Loop(capacity*3/2, 100_000, 1)
	loopHits := func(p Policy) (hits int) {
		defer p.Close()
		if c, ok := p.(Clairvoyant); ok {
			c.Prepare(keys)
		}
		for _, k := range keys {
			if p.Access(k) && k >= trace.LoopBase {
				hits++
			}
		}
		return hits
	}
	for _, tt := range []struct {
		name string
		new  Constructor
	}{{"fifo", NewFIFO}, {"lru", NewLRU}} {
		if got := loopHits(tt.new(capacity)); got != 0 {
			t.Errorf("%s hits on loop keys = %d, want 0", tt.name, got)
		}
	}
	// Optimal can keep nearly capacity loop keys: about 2/3 of the loop.
	if got, min := loopHits(NewOptimal(capacity)), 40_000; got < min {
		t.Errorf("optimal hits on loop keys = %d, want at least %d", got, min)
	}
}
