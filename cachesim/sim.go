package main

import (
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/tiercache/tiercache/cachesim/internal/policy"
)

// cell identifies one replay: a policy at a cache size.
type cell struct {
	policy string
	size   int
}

// alone is held for writing by the replay of an [policy.Async] policy and
// for reading by all others, so an async policy never shares the CPUs with
// another replay. Without it, ristretto's goroutine waits for a busy CPU and
// ristretto drops most Sets: on web07 at 500 entries it scored 0 % hits
// when replayed next to another cache, and Wait took milliseconds.
var alone sync.RWMutex

// replay runs keys through a new policy of the given capacity and returns
// the hit ratio in percent and how long the replay took, not counting the
// wait for other replays.
func replay(newPolicy policy.Constructor, capacity int, keys []uint64) (float64, time.Duration) {
	p := newPolicy(capacity)
	defer p.Close()
	if _, ok := p.(policy.Async); ok {
		alone.Lock()
		defer alone.Unlock()
	} else {
		alone.RLock()
		defer alone.RUnlock()
	}
	start := time.Now()
	if c, ok := p.(policy.Clairvoyant); ok {
		c.Prepare(keys)
	}
	hits := 0
	for _, k := range keys {
		if p.Access(k) {
			hits++
		}
	}
	if len(keys) == 0 {
		return 0, 0
	}
	return 100 * float64(hits) / float64(len(keys)), time.Since(start)
}

// simulate replays every cell on up to GOMAXPROCS goroutines. Each replay
// owns its policy and reads its keys only, so the results do not depend on
// scheduling, except for policies that are nondeterministic themselves
// (ristretto, otter). keysFor returns the trace for a size and must be safe
// to call concurrently. If log is not nil, it is called after each replay
// with its duration, from the replaying goroutine.
func simulate(cells []cell, keysFor func(size int) []uint64, log func(cell, time.Duration)) (map[cell]float64, error) {
	ctors := make(map[string]policy.Constructor)
	for _, c := range cells {
		ctor, err := policy.Lookup(c.policy)
		if err != nil {
			return nil, err
		}
		ctors[c.policy] = ctor
	}

	results := make([]float64, len(cells))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(cells)) {
		wg.Go(func() {
			for i := range jobs {
				c := cells[i]
				var d time.Duration
				results[i], d = replay(ctors[c.policy], c.size, keysFor(c.size))
				if log != nil {
					log(c, d)
				}
			}
		})
	}
	for i := range cells {
		jobs <- i
	}
	close(jobs)
	wg.Wait()

	m := make(map[cell]float64, len(cells))
	for i, c := range cells {
		m[c] = results[i]
	}
	return m, nil
}

// cellsFor returns the cross product of policies and sizes.
func cellsFor(policies []string, sizes []int) []cell {
	var cells []cell
	for _, p := range policies {
		for _, s := range sizes {
			cells = append(cells, cell{p, s})
		}
	}
	return cells
}

// keysBySize loads w's trace once, or once per size if it depends on it.
func keysBySize(w workload, sizes []int) (func(int) []uint64, error) {
	if !w.perCapacity {
		keys, err := w.keys(0)
		if err != nil {
			return nil, err
		}
		return func(int) []uint64 { return keys }, nil
	}
	m := make(map[int][]uint64, len(sizes))
	for _, s := range sizes {
		keys, err := w.keys(s)
		if err != nil {
			return nil, err
		}
		m[s] = keys
	}
	return func(s int) []uint64 {
		keys, ok := m[s]
		if !ok {
			panic(fmt.Sprintf("no %s trace for size %d", w.name, s))
		}
		return keys
	}, nil
}
