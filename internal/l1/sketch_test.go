package l1

import (
	"fmt"
	"sync"
	"testing"
)

// TestSketchCountsSaturatesAndHalves: a key's estimate is what was added,
// up to 15, and halving halves it.
func TestSketchCountsSaturatesAndHalves(t *testing.T) {
	s := newSketch(1000)
	h := s.hash("k")
	if got := s.estimate(h); got != 0 {
		t.Fatalf("estimate of an unseen key = %d; want 0", got)
	}
	s.add(h, 3)
	s.add(h, 1)
	if got := s.estimate(h); got != 4 {
		t.Fatalf("estimate after adding 3 and 1 = %d; want 4", got)
	}
	s.add(h, 100)
	if got := s.estimate(h); got != 15 {
		t.Fatalf("estimate after adding 100 more = %d; want 15 (saturated)", got)
	}
	s.halve()
	if got := s.estimate(h); got != 7 {
		t.Fatalf("estimate after halving 15 = %d; want 7", got)
	}
	for range 3 {
		s.halve()
	}
	if got := s.estimate(h); got != 0 {
		t.Fatalf("estimate after halving 4 times = %d; want 0", got)
	}
}

// TestSketchConcurrentAdds: adds racing on the same words (goroutines
// counting overlapping keys in a small sketch) must not lose counts: a
// key's estimate is at least what was added to it, saturated. An update
// by load and store instead of CAS loses some.
func TestSketchConcurrentAdds(t *testing.T) {
	s := newSketch(64) // small: many keys share blocks
	const keys, per = 200, 10
	hashes := make([]uint64, keys)
	for i := range hashes {
		hashes[i] = s.hash(fmt.Sprint(i))
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range keys * per {
				s.add(hashes[(i+g*7)%keys], 1)
			}
		})
	}
	wg.Wait()
	for i, h := range hashes {
		if got := s.estimate(h); got < min(4*per, 15) || got > 15 {
			t.Fatalf("key %d: estimate %d after %d adds; want at least %d, at most 15", i, got, 4*per, min(4*per, 15))
		}
	}
}
