package trace

import (
	"math"
	"math/rand/v2"
	"sort"
)

// LoopBase is the first key of the loop in [Loop]; loop keys are
// LoopBase, LoopBase+1, ..., so they never collide with the Zipf keys
// mixed into it, which lie in [1, 10^6].
const LoopBase = 1 << 40

// Zipf returns accesses keys drawn from a Zipf distribution with exponent s
// over the keys 1..n (key k has weight k^-s), using a PCG generator seeded
// with seed.
//
// It samples by inverting the cumulative distribution with a binary search
// rather than using math/rand's Zipf, which only accepts s > 1; one sampler
// for every s keeps s=0.8 and s=1.01 comparable.
func Zipf(s float64, n, accesses int, seed uint64) []uint64 {
	z := newZipf(s, n)
	rng := rand.New(rand.NewPCG(seed, 0))
	keys := make([]uint64, accesses)
	for i := range keys {
		keys[i] = z.sample(rng)
	}
	return keys
}

// Loop returns accesses keys in which 80 % cycle in order through
// loopKeys distinct keys and 20 % are drawn from Zipf(1.01) over 10^6 other
// keys. The choice between the two and the Zipf draws come from a PCG
// generator seeded with seed.
//
// A loop slightly longer than the cache defeats LRU and FIFO completely
// (each key is evicted just before it comes round again), while a policy
// that keeps a fixed part of the loop hits on that part every cycle.
func Loop(loopKeys, accesses int, seed uint64) []uint64 {
	z := newZipf(1.01, 1_000_000)
	rng := rand.New(rand.NewPCG(seed, 1))
	keys := make([]uint64, accesses)
	next := 0
	for i := range keys {
		if rng.IntN(5) == 0 {
			keys[i] = z.sample(rng)
			continue
		}
		keys[i] = LoopBase + uint64(next)
		next = (next + 1) % loopKeys
	}
	return keys
}

// zipf samples ranks by inverse transform over a precomputed table.
type zipf struct {
	cum []float64 // cum[i] is the total weight of ranks 1..i+1
}

func newZipf(s float64, n int) *zipf {
	cum := make([]float64, n)
	var sum float64
	for i := range cum {
		sum += math.Pow(float64(i+1), -s)
		cum[i] = sum
	}
	return &zipf{cum: cum}
}

func (z *zipf) sample(rng *rand.Rand) uint64 {
	u := rng.Float64() * z.cum[len(z.cum)-1]
	// The first rank whose cumulative weight exceeds u; u < total, so
	// the index is always in range.
	i := sort.Search(len(z.cum), func(i int) bool { return z.cum[i] > u })
	return uint64(i + 1)
}
