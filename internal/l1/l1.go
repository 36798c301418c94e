package l1

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/tiercache/tiercache/internal/clock"
)

// Entry is what L1 holds for a key. Value is the caller's (the facade
// keeps decoded values and their freshness there, so a hit decodes
// nothing) and Cost what the entry counts against the budget (see
// EntryCost); both are set before the entry is stored and read-only after.
// The rest is L1's bookkeeping.
type Entry[V any] struct {
	Value V
	Cost  int64
	// at is the entry's index in L1's residents while it is one, guarded
	// by residents.mu.
	at int32
	// state drives the item and cost accounting: ristretto admits and evicts
	// on its own goroutine, so the writer and the OnExit hook race to settle
	// each entry. entryPending → entryCounted (queued) → entryGone (evicted,
	// deleted, replaced or rejected); an entry rejected before the writer
	// counted it goes straight to entryGone and is never counted.
	state atomic.Int32
	// dead marks a value that a later write or delete of its key replaced
	// while ristretto still had it queued: ristretto may store it before
	// the Del queued after it removes it, and reads must not see it then.
	dead atomic.Bool
	// kh is the key's hash in L1's frequency sketch, and hits counts the
	// reads of this value since it entered L1 (hits in the sketch would
	// cost every hit a hash and four CASes): the admission gate adds the
	// two. See touch for the packing. key is what shed deletes when it
	// evicts the value. put sets kh and key once, before any reader can
	// see the entry.
	kh   uint64
	hits atomic.Uint64
	key  string
}

// touch counts a read of e at now, L1's clock (l1.now), whose low 4 bits
// are 0. hits holds the clock of its last update with a 4-bit count in
// those bits. The count halves once per sketch epoch since, as the
// sketch's counters do, and saturates at 15; the tick tells the gate
// which of two values was read last. A read in the same tick as the last
// one to a saturated count only loads the word, so that a hot key's
// readers do not bounce its cache line between cores.
func (e *Entry[V]) touch(now uint64) {
	old := e.hits.Load()
	if old == now|15 {
		return
	}
	e.hits.Store(now | uint64(min(readsAt(old, now)+1, 15)))
}

// reads returns e's read count as of now.
func (e *Entry[V]) reads(now uint64) uint32 { return readsAt(e.hits.Load(), now) }

// readsAt returns the read count that hits (see touch) holds as of now.
func readsAt(hits, now uint64) uint32 {
	age := (now>>4 - hits>>4) & (1<<28 - 1) // in epochs: the tick's bits drop out
	return uint32(hits&15) >> min(age, 4)
}

const (
	entryPending int32 = iota
	entryCounted
	entryGone
)

// EntryOverhead is what L1 holds for an entry besides its key and value
// (the entry, ristretto's item, map and policy slots, the gate's share of
// its sketch and residents, the window's ghosts), as measured in
// docs/benchmarks.md. Counting it keeps the budget a bound on memory for
// small values too.
const EntryOverhead = 272

// EntryCost is what an entry for key with an encoded value of n bytes
// counts against the budget.
func EntryCost(key string, n int) int64 { return int64(len(key)+n) + EntryOverhead }

// Cache is the in-process tier: an admission window in front of ristretto
// (W-TinyLFU, as Caffeine), with ristretto's sharp edges filed off.
//
// Why the window: ristretto admits a new key only if its TinyLFU sketch
// says the key is used more often than the keys it would evict, and a key
// seen once is not. Where recent keys matter most (most real traffic),
// that loses many points of hit ratio to plain LRU (docs/hit-ratio.md).
// New values go into the window, synchronously; those it evicts pass an
// admission gate of our own (admit), which counts misses in a sketch
// (sketch.go) and reads in the entries. The window's share of the budget
// adapts to the traffic (window.go).
//
// Ristretto's Set is asynchronous (a new key reaches the map only after its
// policy goroutine admits it) and may be dropped or rejected. Worse, a second
// Set of a key whose first Set is still queued is refused by the policy
// ("already present"), so the older value is the one that lands. Every
// write therefore queues a Del of the key before ristretto can see the new
// value (ristretto applies its queue in order), and Set waits for the
// queue, so that after Set returns L1 holds the new value or nothing, never
// an older one. Fill, on the read path, does not wait.
//
// It is safe for concurrent use.
type Cache[V any] struct {
	r      *ristretto.Cache[string, *Entry[V]]
	clk    *clock.Coarse // the window's TTLs
	items  atomic.Int64
	cost   atomic.Int64
	closed atomic.Bool
	// life keeps writes (read-locked) away from close and clear
	// (write-locked): ristretto panics on a Del after Close, and a Wait
	// that races with Close never returns. Hits take no lock.
	life sync.RWMutex

	// mu guards the window's writes and orders the writes to ristretto:
	// Dels and offers are queued under it, so ristretto applies them in
	// the order the window saw.
	mu  sync.Mutex
	win window[V]

	// The admission gate (admit). sk counts misses. now is L1's clock for
	// the entries' read counts: a tick in the high 32 bits, which advances
	// every 1/16 of the entries' worth of requests, and an epoch in bits 4
	// to 31, which advances each time sk halves, so that the entries' own
	// read counts age with it. res holds the values ristretto stores, for
	// the gate to sample.
	sk  *sketch
	now atomic.Uint64
	res residents[V]
	// requests reads the cache's L1 hit and miss counters, which the
	// cache keeps anyway, for the climber and the clock; nil in tests
	// that drive neither. Under mu: the gate's random state and the
	// request counts at the last halving and the last tick.
	requests func() (hits, misses int64)
	rng      uint64
	agedAt   int64
	tickedAt int64
}

func New[V any](maxCost int64, clk *clock.Coarse, requests func() (hits, misses int64)) (*Cache[V], error) {
	entries := max(maxCost/EntryOverhead, 1)
	c := &Cache[V]{
		clk: clk,
		sk:  newSketch(entries),
		rng: rand.Uint64() | 1,
	}
	// NumCounters should be about ten times the number of items the cache
	// holds when full (ristretto's README). Entries cost at least
	// EntryOverhead (272) bytes plus their key and value, so maxCost/64
	// gives four counters or more per entry, for a sketch of about 5 % of
	// the budget: twice that bought no hit ratio worth having and slowed
	// hits (the policy goroutine's cache misses). A small cache gets at
	// least 100k: the longer the sketch's memory, the better it tells
	// frequent keys from the rest.
	counters := max(maxCost/64, 100_000)
	r, err := ristretto.NewCache(&ristretto.Config[string, *Entry[V]]{
		NumCounters: counters,
		MaxCost:     maxCost,
		BufferItems: 64,
		// Costs are the bytes we measured; ristretto's per-item overhead
		// would make a byte budget hold far fewer small values.
		IgnoreInternalCost: true,
		OnExit:             c.onExit,
	})
	if err != nil {
		return nil, err
	}
	c.r = r
	c.requests = requests
	c.win.init(maxCost, entries)
	c.r.UpdateMaxCost(maxCost - c.win.max)
	return c, nil
}

// Get returns the live entry for key, and counts the read for the
// admission gate: a miss in the sketch, a hit in the entry. It takes no
// lock and does not allocate on a hit.
func (c *Cache[V]) Get(key string) (*Entry[V], bool) {
	e, ok := c.Lookup(key)
	if !ok {
		c.sk.add(c.sk.hash(key), 1)
		return nil, false
	}
	e.touch(c.now.Load())
	return e, true
}

// Lookup is Get without counting the read, for a second look at a key
// within one request. Ristretto comes first, also for keys in the window:
// it holds most of L1, and its Get records the access in the sketch its
// own admission uses.
func (c *Cache[V]) Lookup(key string) (*Entry[V], bool) {
	if e, ok := c.r.Get(key); ok && !e.dead.Load() {
		return e, true
	}
	n, ok := c.win.lookup(key)
	switch {
	case !ok:
		// The window forgets an offered value once ristretto has stored
		// it, so a value that moved between the two looks is in ristretto
		// now: look again, or a read could find it in neither place.
		if e, ok := c.r.Get(key); ok && !e.dead.Load() {
			return e, true
		}
		return nil, false
	case !n.live(c.clk):
		return nil, false
	case n.offered.Load():
		// On its way into ristretto: serve it until ristretto has it,
		// unless ristretto refused it.
		if n.e.state.Load() == entryGone {
			return nil, false
		}
	case !n.ref.Load():
		n.ref.Store(true) // only once: a store per hit would bounce the line between cores
	}
	return n.e, true
}

// Set stores e under key for ttl (0: no expiry) and reports whether L1 holds
// it afterwards: this is what gives Set read-your-write. See the type comment
// for why it waits.
func (c *Cache[V]) Set(key string, e *Entry[V], ttl time.Duration) bool {
	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed.Load() || ttl < 0 {
		return false
	}
	inWindow, queued := c.put(key, e, ttl)
	if !inWindow && !queued {
		// Dropped: the set buffer was full. Drain it and try once more.
		c.r.Wait()
		inWindow, queued = c.put(key, e, ttl)
	}
	c.r.Wait() // for the Del that put queued: see the type comment
	if !inWindow && !queued {
		return false
	}
	// The window may have passed it on to ristretto meanwhile, which may
	// have refused it.
	if n, ok := c.win.lookup(key); ok && n.e == e && !n.offered.Load() {
		return true
	}
	got, ok := c.r.Get(key)
	return ok && got == e
}

// Fill stores e, read from L2 or loaded, without waiting for ristretto's
// policy goroutine: a fill is on the miss path of a read, and the wait
// costs more than the L2 round trip's other overheads together.
func (c *Cache[V]) Fill(key string, e *Entry[V], ttl time.Duration) {
	c.life.RLock()
	defer c.life.RUnlock()
	if !c.closed.Load() && ttl >= 0 {
		c.put(key, e, ttl)
	}
}

// put replaces key's value in both places with e, in the window, evicting
// the oldest values into ristretto as needed. A value larger than the
// window goes to ristretto directly; queued reports whether ristretto took
// it into its queue (a full queue drops it).
func (c *Cache[V]) put(key string, e *Entry[V], ttl time.Duration) (inWindow, queued bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The new node replaces the old one in the map before the Del removes
	// ristretto's copy: a concurrent read finds the old value or the new
	// one, never neither (a hot key refreshed in the background must not
	// send its readers to the loader).
	old := c.detach(key)
	c.win.settle(c.r)
	if c.requests != nil {
		// Read once: the counters are striped over 16 cache lines that
		// every hit writes.
		hits, misses := c.requests()
		n := hits + misses
		if c.win.climb(n, c.items.Load(), c.cost.Load()) {
			c.r.UpdateMaxCost(c.win.total - c.win.max)
			c.shed(c.over(0))
		}
		c.age(n)
	}
	if e.kh == 0 { // set once, before any reader can see e
		e.kh = c.sk.hash(key)
		e.key = key
	}
	if old == nil {
		c.win.missed(e.kh) // or a write of a key L1 did not hold: rare enough
	}
	now := c.clk.Exact()
	var deadline int64
	if ttl > 0 {
		c.clk.Start()
		deadline = now + int64(min(ttl, time.Duration(math.MaxInt64-now)))
	}
	if e.Cost > c.win.max {
		n := &node[V]{key: key, e: e, deadline: deadline}
		c.win.offer(n)
		c.r.Del(key)
		c.evict(now)
		if !c.admit(e) || !c.add(key, e, ttl) {
			c.win.forget(n)
			return false, false
		}
		return false, true
	}
	c.win.push(key, e, deadline)
	c.r.Del(key)
	c.count(e)
	c.evict(now)
	return true, false
}

const epochBits = 1<<32 - 1<<4 // of l1.now

// fold returns e's reads to the sketch as it leaves L1, so that they
// still count if its key comes back soon.
func (c *Cache[V]) fold(e *Entry[V]) {
	c.sk.add(e.kh, e.reads(c.now.Load()))
}

// remove takes key out of the window, and out of reads if ristretto has
// it queued. c.mu is held.
func (c *Cache[V]) remove(key string) {
	if n := c.detach(key); n != nil {
		c.win.forget(n)
	}
}

// detach takes key's node out of the window's list and bookkeeping but
// leaves it readable, for put to replace. An offered value is marked dead,
// for the case that ristretto stores it before the Del queued after it.
// c.mu is held.
func (c *Cache[V]) detach(key string) *node[V] {
	n, ok := c.win.lookup(key)
	switch {
	case !ok:
		return nil
	case n.offered.Load():
		n.e.dead.Store(true)
		n.gone = true // settle skips it
	default:
		c.win.unlink(n)
		c.uncount(n.e)
	}
	return n
}

// count and uncount keep the items and bytes that Stats reports.
func (c *Cache[V]) count(e *Entry[V]) {
	c.items.Add(1)
	c.cost.Add(e.Cost)
}

func (c *Cache[V]) uncount(e *Entry[V]) {
	c.items.Add(-1)
	c.cost.Add(-e.Cost)
}

// add queues e and counts it; onExit uncounts it when ristretto lets go of
// it, including when the policy rejects it. e joins the residents first:
// ristretto may let go of it before SetWithTTL returns.
func (c *Cache[V]) add(key string, e *Entry[V], ttl time.Duration) bool {
	if c.closed.Load() || ttl < 0 {
		return false
	}
	c.res.add(e)
	if !c.r.SetWithTTL(key, e, e.Cost, ttl) {
		c.res.remove(e)
		return false
	}
	if e.state.CompareAndSwap(entryPending, entryCounted) {
		c.count(e)
	}
	return true
}

func (c *Cache[V]) Delete(key string) {
	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed.Load() {
		return
	}
	c.mu.Lock()
	c.remove(key)
	c.r.Del(key)
	c.mu.Unlock()
}

// Stats is what L1 holds now: entries, their bytes, and the share of the
// budget that the admission window has (it adapts to the traffic).
type Stats struct{ Items, Bytes, WindowBytes int64 }

// Stats returns what c holds now.
func (c *Cache[V]) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{Items: c.items.Load(), Bytes: c.cost.Load(), WindowBytes: c.win.max}
}

// Wait waits for ristretto to apply the writes queued so far.
func (c *Cache[V]) Wait() {
	c.life.RLock()
	defer c.life.RUnlock()
	if !c.closed.Load() {
		c.r.Wait()
	}
}

// Clear removes every entry. Callers bump the fence's global generation
// first, so that fills racing with the clear do not survive it.
func (c *Cache[V]) Clear() {
	c.life.Lock()
	defer c.life.Unlock()
	if !c.closed.Load() {
		c.clearWindow()
		c.r.Clear()
	}
}

func (c *Cache[V]) clearWindow() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for n := c.win.oldest(); n != nil; n = c.win.oldest() {
		c.remove(n.key)
	}
	c.win.forgetOffered()
}

// onExit runs when ristretto lets go of an entry for any reason.
func (c *Cache[V]) onExit(e *Entry[V]) {
	if e == nil {
		return
	}
	if e.state.Swap(entryGone) == entryCounted {
		c.uncount(e)
	}
	c.res.remove(e)
	c.fold(e)
}

func (c *Cache[V]) Close() {
	c.life.Lock()
	defer c.life.Unlock()
	if c.closed.CompareAndSwap(false, true) {
		c.clearWindow()
		c.r.Close()
	}
}
