package policy

import (
	"math/rand/v2"
	"testing"
)

// bruteForceOPT returns the most hits any demand-paging cache of the given
// capacity can get on keys, by trying every choice of victim on every miss.
func bruteForceOPT(keys []uint64, capacity int) int {
	var best func(i int, cached []uint64) int
	best = func(i int, cached []uint64) int {
		if i == len(keys) {
			return 0
		}
		for _, k := range cached {
			if k == keys[i] {
				return 1 + best(i+1, cached)
			}
		}
		if len(cached) < capacity {
			return best(i+1, append(cached[:len(cached):len(cached)], keys[i]))
		}
		most := 0
		for v := range cached {
			next := append([]uint64(nil), cached...)
			next[v] = keys[i]
			most = max(most, best(i+1, next))
		}
		return most
	}
	return best(0, nil)
}

func optimalHits(keys []uint64, capacity int) int {
	o := NewOptimal(capacity).(*Optimal)
	o.Prepare(keys)
	hits := 0
	for _, k := range keys {
		if o.Access(k) {
			hits++
		}
	}
	return hits
}

func TestOptimalHandMade(t *testing.T) {
	tests := []struct {
		name     string
		keys     []uint64
		capacity int
		want     int
	}{
		// Demand paging: 3, 4 and 5 must be stored, so only one of 1 and 2
		// survives the scan. (With bypass, OPT would keep both.)
		{"scan", []uint64{1, 2, 3, 4, 5, 1, 2}, 2, 1},
		{"repeat", []uint64{7, 7, 7, 7}, 1, 3},
		{"cycle", []uint64{1, 2, 3, 1, 2, 3, 1, 2, 3}, 2, 3},
		{"fits", []uint64{1, 2, 3, 1, 2, 3}, 3, 3},
		{"empty", nil, 3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := optimalHits(tt.keys, tt.capacity); got != tt.want {
				t.Errorf("Optimal(%v, cap %d) hits = %d, want %d", tt.keys, tt.capacity, got, tt.want)
			}
			if got := bruteForceOPT(tt.keys, tt.capacity); got != tt.want {
				t.Errorf("bruteForceOPT(%v, cap %d) = %d, want %d", tt.keys, tt.capacity, got, tt.want)
			}
		})
	}
}

func TestOptimalMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 0))
	for range 300 {
		n := 1 + rng.IntN(14)
		alphabet := 2 + rng.IntN(5)
		capacity := 1 + rng.IntN(3)
		keys := make([]uint64, n)
		for i := range keys {
			keys[i] = uint64(rng.IntN(alphabet))
		}
		got, want := optimalHits(keys, capacity), bruteForceOPT(keys, capacity)
		if got != want {
			t.Fatalf("Optimal(%v, cap %d) hits = %d, brute force = %d", keys, capacity, got, want)
		}
	}
}

func TestOptimalOutOfOrderPanics(t *testing.T) {
	o := NewOptimal(2).(*Optimal)
	o.Prepare([]uint64{1, 2})
	defer func() {
		if recover() == nil {
			t.Error("Access(2) before Access(1) did not panic")
		}
	}()
	o.Access(2)
}
