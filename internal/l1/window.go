package l1

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/tiercache/tiercache/internal/clock"
)

// window is L1's admission window: the newest values, in a share of the
// L1 budget that adapts to the traffic (climb), as in Caffeine's
// W-TinyLFU. Values enter the window; those it evicts pass L1's admission
// gate into ristretto if they are read more often than what they would
// replace. Recency-heavy traffic gains from a large window (it then
// behaves as LRU), frequency-heavy traffic from a small one.
//
// Eviction is CLOCK (second chance): a hit sets the node's reference bit,
// without a lock, and eviction moves referenced nodes to the back once
// instead of evicting them. The map is a sync.Map, so a hit in the window
// takes no lock either. Everything else happens under l1.mu.
type window[V any] struct {
	nodes      sync.Map // string → *node[V], in the window or offered
	head, tail *node[V] // oldest, newest
	count      int      // nodes in the list
	used       int64    // the cost of the values held
	// offered lists, oldest first, the nodes whose values ristretto has
	// queued but maybe not applied yet; reads find them in nodes
	// meanwhile, so that a value is never in neither place.
	offered []*node[V]
	max     int64 // the window's budget
	total   int64 // the whole L1 budget

	// The climber. refused and dropped remember the keys that the gate
	// kept out of ristretto and those it deleted from ristretto, a step's
	// worth of each; wantWindow and wantMain count the misses since the
	// sample started on keys that they remember.
	warm                 bool  // L1 has been full: before, nothing is refused or dropped
	sampleAt             int64 // requests when the sample started
	sampleSizeMin        int64
	refused, dropped     ghost
	wantWindow, wantMain int64
}

// node is a value in the window.
type node[V any] struct {
	key        string
	e          *Entry[V]
	deadline   int64 // Unix ns; 0: none
	ref        atomic.Bool
	offered    atomic.Bool // its value is in ristretto's queue; it is not in the list
	gone       bool        // out of nodes
	prev, next *node[V]
}

const (
	windowInitialShare = 0.01 // Caffeine's start
	// climbStepShare is how far the window's budget moves per sample, as
	// Caffeine's: a 16th of L1's. A 32nd scored a point more on orm-night
	// and half a point less on orm-busy at 1,000 entries, where L1 is
	// closest to LRU − 2; a 64th or an 8th scored less on most traces
	// (docs/hit-ratio.md).
	climbStepShare = 1.0 / 16
	// windowRistrettoShare keeps 1/20 of the budget for ristretto: with
	// none, it refuses every offer and so never evicts what it holds. (A
	// tenth cost 1.7 points at 1,000 entries on orm-busy, which wants LRU.)
	windowRistrettoShare = 20
)

// init sizes the window for an L1 of total bytes that holds about entries
// values when full.
func (w *window[V]) init(total, entries int64) {
	w.total = total
	w.max = int64(float64(total) * windowInitialShare)
	w.sampleSizeMin = 1000
	n := int(max(int64(float64(entries)*climbStepShare), 16))
	w.refused.init(n)
	w.dropped.init(n)
}

// lookup returns key's node. It takes no lock.
func (w *window[V]) lookup(key string) (*node[V], bool) {
	v, ok := w.nodes.Load(key)
	if !ok {
		return nil, false
	}
	return v.(*node[V]), true
}

func (w *window[V]) oldest() *node[V] { return w.head }

func (w *window[V]) push(key string, e *Entry[V], deadline int64) {
	n := &node[V]{key: key, e: e, deadline: deadline}
	w.link(n)
	w.count++
	w.used += e.Cost
	w.nodes.Store(key, n)
}

// offer keeps n, which is not in the list, readable until ristretto has
// applied its value (settle).
func (w *window[V]) offer(n *node[V]) {
	n.offered.Store(true)
	w.nodes.Store(n.key, n)
	w.offered = append(w.offered, n)
}

// settle forgets the offered nodes, oldest first, whose values ristretto
// has stored or refused by now. GetTTL does not count as a read.
func (w *window[V]) settle(r *ristretto.Cache[string, *Entry[V]]) {
	i := 0
	for ; i < len(w.offered); i++ {
		n := w.offered[i]
		if !n.gone {
			if _, stored := r.GetTTL(n.key); !stored && n.e.state.Load() != entryGone {
				break // still queued
			}
			w.forget(n)
		}
	}
	clear(w.offered[:i])
	w.offered = w.offered[i:]
}

// forget takes n out of nodes.
func (w *window[V]) forget(n *node[V]) {
	n.gone = true
	w.nodes.CompareAndDelete(n.key, n)
}

// forgetOffered forgets every offered node: ristretto is being cleared.
func (w *window[V]) forgetOffered() {
	for _, n := range w.offered {
		w.forget(n)
	}
	clear(w.offered)
	w.offered = w.offered[:0]
}

func (w *window[V]) link(n *node[V]) {
	n.prev = w.tail
	if w.tail != nil {
		w.tail.next = n
	} else {
		w.head = n
	}
	w.tail = n
}

// unlink takes n out of the list; the caller forgets or offers it.
func (w *window[V]) unlink(n *node[V]) {
	w.count--
	w.used -= n.e.Cost
	if n.prev != nil {
		n.prev.next = n.next
	} else {
		w.head = n.next
	}
	if n.next != nil {
		n.next.prev = n.prev
	} else {
		w.tail = n.prev
	}
	n.prev, n.next = nil, nil
}

// victim returns the node to evict next: the oldest one not read since it
// was last passed over. Nodes read meanwhile move to the back, once.
func (w *window[V]) victim() *node[V] {
	for range w.count { // one pass at most: readers may set bits meanwhile
		n := w.head
		if !n.ref.Load() || n == w.tail {
			return n
		}
		n.ref.Store(false)
		w.head, n.next.prev = n.next, nil
		n.next, n.prev = nil, w.tail
		w.tail.next, w.tail = n, n
	}
	return w.head
}

// climb ends a sample if enough requests were seen since the last one,
// and moves the window's budget by a step toward the side that would have
// served more of the sample's misses with a step more: misses on keys the
// gate recently refused (a larger window would have held them until they
// were read again) against misses on keys it recently deleted from
// ristretto (a larger ristretto would have kept them). On a tie it holds.
//
// Caffeine's hill climber, which this replaced, moves by whether the hit
// ratio rose since the last sample; but a real trace's hit ratio swings by
// several points between samples on its own, far more than a step of the
// window changes it, and the window wandered: on orm-busy at 1,000
// entries it spent from a fifth to half of its samples under 30 % when
// 80 % served best, and the table's mean moved by 0.6 points from run to
// run. Both counts here come from the same sample, so what the traffic
// does to one it does to the other. On a loop over more keys than L1
// holds, refused keys come back only after many refusals, and the window
// stays small, as it should (docs/hit-ratio.md).
//
// L1 has seen n requests and holds items entries of cost bytes: a sample
// is ten times the entries, as Caffeine's, and the first starts when L1
// is full. It reports whether the budget changed.
func (w *window[V]) climb(n, items, cost int64) bool {
	if !w.warm {
		if cost < w.total-w.total/16 {
			return false
		}
		w.warm = true
		w.sampleAt = n
		w.wantWindow, w.wantMain = 0, 0
		return false
	}
	if n-w.sampleAt < max(w.sampleSizeMin, 10*items) {
		return false
	}
	w.sampleAt = n
	step := int64(climbStepShare * float64(w.total))
	switch {
	case w.wantWindow < w.wantMain:
		step = -step
	case w.wantWindow == w.wantMain:
		step = 0
	}
	w.wantWindow, w.wantMain = 0, 0
	next := min(max(w.max+step, 0), w.total-w.total/windowRistrettoShare)
	if next == w.max {
		return false
	}
	w.max = next
	return true
}

// missed counts a miss on the key whose sketch hash is kh for the
// climber, if the gate recently refused or dropped it.
func (w *window[V]) missed(kh uint64) {
	if w.refused.has(kh) {
		w.wantWindow++
	}
	if w.dropped.has(kh) {
		w.wantMain++
	}
}

// ghost remembers the last n key hashes added to it.
type ghost struct {
	ring []uint64
	next int
	in   map[uint64]int32 // how many times each is in ring
}

func (g *ghost) init(n int) {
	g.ring = make([]uint64, n)
	g.in = make(map[uint64]int32, n)
}

func (g *ghost) add(kh uint64) {
	if old := g.ring[g.next]; old != 0 {
		if g.in[old]--; g.in[old] == 0 {
			delete(g.in, old)
		}
	}
	g.ring[g.next] = kh
	g.in[kh]++
	g.next = (g.next + 1) % len(g.ring)
}

func (g *ghost) has(kh uint64) bool { return g.in[kh] > 0 }

// live reports whether n's value may still be served. The coarse clock
// answers for values far from their deadline, which is the common case;
// near it (within the clock's worst lag, with room to spare) the exact
// time does, so that a window value expires when a ristretto one would.
func (n *node[V]) live(k *clock.Coarse) bool {
	if n.deadline == 0 {
		return true
	}
	if n.deadline-k.Now() > int64(time.Second) {
		return true
	}
	return k.Exact() < n.deadline
}

// ttl reports how long n's value has left, and whether it has any.
func (n *node[V]) ttl(now int64) (time.Duration, bool) {
	if n.deadline == 0 {
		return 0, true
	}
	left := time.Duration(n.deadline - now)
	return left, left > 0
}
