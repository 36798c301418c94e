package l1

import (
	"math"
	"math/bits"
	"sync"
)

// Eviction: what leaves the window, what ristretto admits, and what the
// sketch ages.

// evict moves the window's oldest values into ristretto until the window
// is within its budget. c.mu is held.
func (c *Cache[V]) evict(now int64) {
	for c.win.used > c.win.max {
		n := c.win.victim()
		c.win.unlink(n)
		c.uncount(n.e)
		ttl, live := n.ttl(now)
		switch {
		case !live:
			c.win.forget(n)
		case !c.admit(n.e):
			c.win.forget(n)
			c.fold(n.e)
			c.win.refused.add(n.e.kh)
		case c.add(n.key, n.e, ttl):
			c.win.offer(n)
		default:
			c.win.forget(n)
		}
	}
}

// admit is L1's admission gate: it reports whether e, leaving the window,
// should go to ristretto. While ristretto has room, anything goes. When it
// is full, the gate samples a few values ristretto holds and takes the
// least read; e goes in only if it was read more often than that, by more
// than one: e's own miss was counted a moment ago, and letting ties in
// churns L1 on traffic that cycles through more keys than it holds (4
// points on the loop trace). The gate then deletes its victim, so that
// ristretto has room and does not evict by its own sample: ristretto's
// sketch saturates on anything read 15 times between its resets, so its
// choice among such values is random, and a hot value goes as readily as
// a lukewarm one (about a point on the loop trace and on Zipf 0.8).
//
// As in Caffeine, a warm candidate still gets in one time in 128, so that
// an attacker cannot pin residents by inflating their counts. c.mu is held.
func (c *Cache[V]) admit(e *Entry[V]) bool {
	if c.over(e.Cost) <= 0 {
		return true
	}
	now := c.now.Load()
	v, vfreq := c.victim(now)
	if v == nil {
		return true // nothing to compare with: ristretto decides
	}
	cand := c.sk.estimate(e.kh) + e.reads(now)
	if cand <= vfreq+1 && (cand < 6 || c.rand()&127 != 0) {
		return false
	}
	c.drop(v)
	return true
}

// victim returns the least read of a few values ristretto holds, sampled,
// and how often it was read; nil if it found none. Ties go to the value
// read longest ago, by the tick of its last read. c.mu is held.
func (c *Cache[V]) victim(now uint64) (*Entry[V], uint32) {
	c.res.mu.Lock()
	defer c.res.mu.Unlock()
	var v *Entry[V]
	vfreq, vlast, found := uint32(math.MaxUint32), uint32(0), 0
	for range admitDraws {
		if len(c.res.es) == 0 {
			break
		}
		i, _ := bits.Mul64(c.rand(), uint64(len(c.res.es)))
		r := c.res.es[i]
		if r.dead.Load() || r.state.Load() == entryGone {
			continue // on its way out
		}
		h := r.hits.Load()
		f, last := c.sk.estimate(r.kh)+readsAt(h, now), uint32(h>>32)
		if f < vfreq || f == vfreq && last < vlast {
			v, vfreq, vlast = r, f, last
		}
		if found++; found == admitSamples {
			break
		}
	}
	return v, vfreq
}

// shed deletes sampled victims, the least read first, until ristretto
// has given up over more bytes. Ristretto evicts only to store a value,
// and the gate may refuse every value for a long time: without shed, a
// budget that the climber shrank would not take effect meanwhile, and L1
// would hold more than L1MaxBytes. c.mu is held.
func (c *Cache[V]) shed(over int64) {
	for range admitDraws {
		if over <= 0 {
			return
		}
		v, _ := c.victim(c.now.Load())
		if v == nil {
			return
		}
		if c.drop(v) {
			over -= v.Cost
		}
	}
}

// drop deletes v from ristretto, unless a newer value of its key is on
// its way there. (The window may still list v itself, offered to
// ristretto and not yet settled.) c.mu is held.
func (c *Cache[V]) drop(v *Entry[V]) bool {
	if n, ok := c.win.lookup(v.key); ok && n.e != v {
		return false
	}
	v.dead.Store(true) // out of reads and samples now, whenever ristretto lets go of it
	c.r.Del(v.key)
	c.win.dropped.add(v.kh)
	return true
}

const (
	admitSamples = 3 // residents the gate compares a candidate with
	admitDraws   = 8 // draws to find them: values on their way out do not count
)

// residents is the set of values ristretto holds or has queued, for the
// gate to sample: a slice, so that every value can be drawn, each as
// likely as the others. (A table indexed by key hash, lock-free, hid the
// values that shared a slot from the gate: they were never its victims,
// and on the loop trace the gate scored a point less with such a table
// half full, three with one an eighth full and 32 draws.) Its lock is a
// leaf: onExit takes it on ristretto's goroutine, and under c.mu through
// Del.
type residents[V any] struct {
	mu sync.Mutex
	es []*Entry[V]
}

func (r *residents[V]) add(e *Entry[V]) {
	r.mu.Lock()
	e.at = int32(len(r.es))
	r.es = append(r.es, e)
	r.mu.Unlock()
}

// remove takes e out if it is in: ristretto may let go of a value twice
// (a Del, then the queued delete behind it).
func (r *residents[V]) remove(e *Entry[V]) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := e.at
	if int(i) >= len(r.es) || r.es[i] != e {
		return
	}
	last := len(r.es) - 1
	r.es[i] = r.es[last]
	r.es[i].at = i
	r.es[last] = nil
	r.es = r.es[:last]
}

// over returns by how many bytes ristretto would exceed its share of the
// budget with n more: the values L1 counts, less the window's. c.mu is
// held.
func (c *Cache[V]) over(n int64) int64 {
	return c.cost.Load() - c.win.used + n - (c.win.total - c.win.max)
}

// rand returns the next of a xorshift64* sequence. c.mu is held.
func (c *Cache[V]) rand() uint64 {
	c.rng ^= c.rng >> 12
	c.rng ^= c.rng << 25
	c.rng ^= c.rng >> 27
	return c.rng * 2685821657736338717
}

// age advances L1's clock (see l1.now). It ticks every 1/16 of the
// entries' worth of requests. It halves the sketch and advances the epoch
// every 20 requests per entry L1 holds, so that the gate weighs recent
// reads most; but no more often than once per request per word of the
// sketch, which is sized for a full L1: a halving touches every word,
// under c.mu, and an L1 far from full would otherwise halve a large
// sketch every few thousand requests (that doubled the p99 of the
// catalog's outage test under -race). A gate that remembers longer there
// loses nothing: it refuses values only when ristretto is full. n is the
// requests L1 has seen. c.mu is held.
func (c *Cache[V]) age(n int64) {
	items := c.items.Load()
	now := c.now.Load()
	next := now
	if n-c.tickedAt >= max(items/16, 1) {
		c.tickedAt = n
		next += 1 << 32
	}
	if n-c.agedAt >= max(20*max(items, 64), c.sk.words()) {
		c.agedAt = n
		c.sk.halve()
		next = next&^epochBits | (next+1<<4)&epochBits
	}
	if next != now { // every hit loads it: a store would take its line from their cores
		c.now.Store(next)
	}
}
