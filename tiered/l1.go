package tiered

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// entry is what L1 holds for a key: the decoded value, never bytes, so a hit
// costs no decoding.
type entry[V any] struct {
	// checkAt and negative come first: with v they are all a hit reads,
	// and kept together they share a cache line for small values.
	//
	// checkAt is when a hit must look at the clock (Unix ns; 0: never, the
	// L1 TTL is enough); fresh is when the value stops being fresh, hard
	// when it may no longer be served even stale. delta is how long the
	// load that produced it took, for early refresh.
	checkAt  int64
	negative bool
	v        V
	fresh    int64
	hard     int64
	delta    int64
	cost     int64
	// filled is when the read or load that produced the value started
	// (Unix ns): a copy can be no staler than its age. Set only when an
	// invalidation bus may need it.
	filled int64
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
}

const (
	entryPending int32 = iota
	entryCounted
	entryGone
)

// entryOverhead is what L1 holds for an entry besides its key and value:
// the entry itself and ristretto's item, map and policy slots, about 200
// bytes on amd64 as measured with runtime.MemStats over 200,000 small
// entries. Counting it keeps L1MaxBytes a bound on memory for small
// values, which otherwise took five times their budget.
const entryOverhead = 200

// entryCost is what an entry for key with an encoded value of n bytes
// counts against L1MaxBytes.
func entryCost(key string, n int) int64 { return int64(len(key)+n) + entryOverhead }

// l1 is the in-process tier: an admission window in front of ristretto
// (W-TinyLFU, as Caffeine), with ristretto's sharp edges filed off.
//
// Why the window: ristretto admits a new key only if its TinyLFU sketch
// says the key is used more often than the keys it would evict, and a key
// seen once is not. Where recent keys matter most (most real traffic),
// that loses many points of hit ratio to plain LRU (docs/hit-ratio.md).
// New values go into the window, synchronously; those it evicts are
// offered to ristretto, whose sketch has seen every read of them by then.
// The window's share of the budget adapts to the traffic (window.go).
//
// Ristretto's Set is asynchronous (a new key reaches the map only after its
// policy goroutine admits it) and may be dropped or rejected. Worse, a second
// Set of a key whose first Set is still queued is refused by the policy
// ("already present"), so the older value is the one that lands. Every
// write therefore queues a Del of the key before ristretto can see the new
// value (ristretto applies its queue in order), and l1.set waits for the
// queue, so that after set returns L1 holds the new value or nothing, never
// an older one. l1.fill, on the read path, does not wait.
//
// It is safe for concurrent use.
type l1[V any] struct {
	r      *ristretto.Cache[string, *entry[V]]
	clk    *clock // coarse: the window's TTLs
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
}

func newL1[V any](maxCost int64, clk *clock, requests func() (hits, misses int64)) (*l1[V], error) {
	c := &l1[V]{clk: clk}
	// NumCounters should be about ten times the number of items the cache
	// holds when full (ristretto's README). Entries cost at least
	// entryOverhead (200) bytes plus their key and value, so maxCost/64
	// gives three counters or more per entry, for a sketch of about 5 % of
	// the budget: twice that bought no hit ratio worth having and slowed
	// hits (the policy goroutine's cache misses). A small cache gets at
	// least 100k: the longer the sketch's memory, the better it tells
	// frequent keys from the rest.
	counters := max(maxCost/64, 100_000)
	r, err := ristretto.NewCache(&ristretto.Config[string, *entry[V]]{
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
	c.win.init(maxCost, requests)
	c.r.UpdateMaxCost(maxCost - c.win.max)
	return c, nil
}

// get returns the live entry for key. It takes no lock and does not
// allocate. Ristretto comes first, also for keys in the window: its Get
// records every access in the sketch that later decides admission.
func (c *l1[V]) get(key string) (*entry[V], bool) {
	if e, ok := c.r.Get(key); ok && !e.dead.Load() {
		return e, true
	}
	n, ok := c.win.lookup(key)
	switch {
	case !ok || !n.live(c.clk):
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

// set stores e under key for ttl (0: no expiry) and reports whether L1 holds
// it afterwards: this is what gives Set read-your-write. See the type comment
// for why it waits.
func (c *l1[V]) set(key string, e *entry[V], ttl time.Duration) bool {
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

// fill stores e, read from L2 or loaded, without waiting for ristretto's
// policy goroutine: a fill is on the miss path of a read, and the wait
// costs more than the L2 round trip's other overheads together.
func (c *l1[V]) fill(key string, e *entry[V], ttl time.Duration) {
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
func (c *l1[V]) put(key string, e *entry[V], ttl time.Duration) (inWindow, queued bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The new node replaces the old one in the map before the Del removes
	// ristretto's copy: a concurrent read finds the old value or the new
	// one, never neither (a hot key refreshed in the background must not
	// send its readers to the loader).
	c.detach(key)
	c.win.settle(c.r)
	if c.win.climb(c.items.Load(), c.cost.Load()) {
		c.r.UpdateMaxCost(c.win.total - c.win.max)
	}
	now := time.Now().UnixNano()
	var deadline int64
	if ttl > 0 {
		c.clk.ensure()
		deadline = now + int64(min(ttl, time.Duration(math.MaxInt64-now)))
	}
	if e.cost > c.win.max {
		n := &node[V]{key: key, e: e, deadline: deadline}
		c.win.offer(n)
		c.r.Del(key)
		c.evict(now)
		if !c.add(key, e, ttl) {
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

// evict moves the window's oldest values into ristretto until the window
// is within its budget. c.mu is held.
func (c *l1[V]) evict(now int64) {
	for c.win.used > c.win.max {
		n := c.win.victim()
		c.win.unlink(n)
		c.uncount(n.e)
		if ttl, live := n.ttl(now); live && c.add(n.key, n.e, ttl) {
			c.win.offer(n)
		} else {
			c.win.forget(n)
		}
	}
}

// remove takes key out of the window, and out of reads if ristretto has
// it queued. c.mu is held.
func (c *l1[V]) remove(key string) {
	if n := c.detach(key); n != nil {
		c.win.forget(n)
	}
}

// detach takes key's node out of the window's list and bookkeeping but
// leaves it readable, for put to replace. An offered value is marked dead,
// for the case that ristretto stores it before the Del queued after it.
// c.mu is held.
func (c *l1[V]) detach(key string) *node[V] {
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
func (c *l1[V]) count(e *entry[V]) {
	c.items.Add(1)
	c.cost.Add(e.cost)
}

func (c *l1[V]) uncount(e *entry[V]) {
	c.items.Add(-1)
	c.cost.Add(-e.cost)
}

// add queues e and counts it; onExit uncounts it when ristretto lets go of
// it, including when the policy rejects it.
func (c *l1[V]) add(key string, e *entry[V], ttl time.Duration) bool {
	if c.closed.Load() || ttl < 0 || !c.r.SetWithTTL(key, e, e.cost, ttl) {
		return false
	}
	if e.state.CompareAndSwap(entryPending, entryCounted) {
		c.count(e)
	}
	return true
}

func (c *l1[V]) del(key string) {
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

// windowBytes returns the window's budget now.
func (c *l1[V]) windowBytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.win.max
}

// wait waits for ristretto to apply the writes queued so far.
func (c *l1[V]) wait() {
	c.life.RLock()
	defer c.life.RUnlock()
	if !c.closed.Load() {
		c.r.Wait()
	}
}

// clear removes every entry. Callers bump the fence's global generation
// first, so that fills racing with the clear do not survive it.
func (c *l1[V]) clear() {
	c.life.Lock()
	defer c.life.Unlock()
	if !c.closed.Load() {
		c.clearWindow()
		c.r.Clear()
	}
}

func (c *l1[V]) clearWindow() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for n := c.win.oldest(); n != nil; n = c.win.oldest() {
		c.remove(n.key)
	}
	c.win.forgetOffered()
}

// onExit runs when ristretto lets go of an entry for any reason.
func (c *l1[V]) onExit(e *entry[V]) {
	if e == nil {
		return
	}
	if e.state.Swap(entryGone) == entryCounted {
		c.uncount(e)
	}
}

func (c *l1[V]) close() {
	c.life.Lock()
	defer c.life.Unlock()
	if c.closed.CompareAndSwap(false, true) {
		c.clearWindow()
		c.r.Close()
	}
}
