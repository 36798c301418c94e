package tiered

import (
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
}

const (
	entryPending int32 = iota
	entryCounted
	entryGone
)

// l1 is the in-process tier: ristretto, with its two sharp edges filed off.
//
// Ristretto's Set is asynchronous (a new key reaches the map only after its
// policy goroutine admits it) and may be dropped or rejected. Worse, a second
// Set of a key whose first Set is still queued is refused by the policy
// ("already present"), so the older value is the one that lands. l1.set waits
// for the queue and checks that its own entry is the one stored; if not, it
// deletes the key, so that after set returns L1 holds the new value or
// nothing, never an older one. l1.fill, on the read path, does not wait.
//
// It is safe for concurrent use.
type l1[V any] struct {
	r      *ristretto.Cache[string, *entry[V]]
	items  atomic.Int64
	cost   atomic.Int64
	closed atomic.Bool
	// life keeps writes (read-locked) away from close and clear
	// (write-locked): ristretto panics on a Del after Close, and a Wait
	// that races with Close never returns. Hits take no lock.
	life sync.RWMutex
}

func newL1[V any](maxCost int64) (*l1[V], error) {
	c := &l1[V]{}
	// NumCounters should be about ten times the number of items the cache
	// holds when full (ristretto's README). Assume entries of 640 bytes or
	// more, and keep at least 10k counters for small caches.
	counters := max(maxCost/64, 10_000)
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
	return c, nil
}

// get returns the live entry for key. It does not allocate.
func (c *l1[V]) get(key string) (*entry[V], bool) {
	return c.r.Get(key)
}

// set stores e under key for ttl (0: no expiry) and reports whether L1 holds
// it afterwards: this is what gives Set read-your-write. See the type comment
// for why it waits.
func (c *l1[V]) set(key string, e *entry[V], ttl time.Duration) bool {
	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed.Load() {
		return false
	}
	if !c.add(key, e, ttl) {
		// Dropped: the set buffer was full. Drain it and try once more.
		c.r.Wait()
		if !c.add(key, e, ttl) {
			c.r.Del(key)
			return false
		}
	}
	c.r.Wait()
	if got, ok := c.r.Get(key); ok && got == e {
		return true
	}
	// Rejected by the admission policy, or an older queued value won.
	c.r.Del(key)
	return false
}

// fill stores e, read from L2 or loaded, without waiting for ristretto's
// policy goroutine: a fill is on the miss path of a read, and the wait
// costs more than the L2 round trip's other overheads together. The Del
// queued first keeps the order right: an older fill still queued for key is
// removed before e is added, instead of e being refused as a duplicate.
func (c *l1[V]) fill(key string, e *entry[V], ttl time.Duration) {
	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed.Load() {
		return
	}
	c.r.Del(key)
	c.add(key, e, ttl)
}

// add queues e and counts it; onExit uncounts it when ristretto lets go of
// it, including when the policy rejects it.
func (c *l1[V]) add(key string, e *entry[V], ttl time.Duration) bool {
	if c.closed.Load() || ttl < 0 || !c.r.SetWithTTL(key, e, e.cost, ttl) {
		return false
	}
	if e.state.CompareAndSwap(entryPending, entryCounted) {
		c.items.Add(1)
		c.cost.Add(e.cost)
	}
	return true
}

func (c *l1[V]) del(key string) {
	c.life.RLock()
	defer c.life.RUnlock()
	if !c.closed.Load() {
		c.r.Del(key)
	}
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
		c.r.Clear()
	}
}

// onExit runs when ristretto lets go of an entry for any reason.
func (c *l1[V]) onExit(e *entry[V]) {
	if e == nil {
		return
	}
	if e.state.Swap(entryGone) == entryCounted {
		c.items.Add(-1)
		c.cost.Add(-e.cost)
	}
}

func (c *l1[V]) close() {
	c.life.Lock()
	defer c.life.Unlock()
	if c.closed.CompareAndSwap(false, true) {
		c.r.Close()
	}
}
