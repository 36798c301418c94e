package tiered

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Freshness. An entry is fresh until fresh-until (its TTL), may then be
// served stale while one refresh runs in the background until
// fresh-until + StaleTTL, and when a refresh fails, until fresh-until +
// MaxStale; L2 keeps it until the later of the two. Hot keys are refreshed
// before fresh-until by XFetch (Vattani, Chierichetti and Lowenstein,
// "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015): a read at
// time now starts a refresh when now − δ·β·ln(rand) ≥ fresh-until, δ being
// how long the last load took, so that the expected refresh comes about δ·β
// before expiry and readers of a hot key never wait on its load.

// xfetchSpan is how many δ·β before fresh-until a hit starts to draw: an
// earlier refresh has probability below e^−10 per read.
const xfetchSpan = 10

// clock is a coarse wall clock: a goroutine stores the time every
// clockTick, so that L1 hits check freshness with an atomic load instead
// of time.Now (53 ns on the CI VM, about as much as the rest of a hit). It
// starts with the first entry that needs it (one that can be served stale
// or refreshed early): the ticking goroutine is not free either (about 7 %
// of a serial L1 hit benchmark on 2 vCPUs), and caches that never need it
// should not pay.
type clock struct {
	ns      atomic.Int64
	running atomic.Bool
	mu      sync.Mutex // guards starting and stopping
	stopped bool
	stop    chan struct{}
	done    chan struct{}
}

// clockTick is the clock's resolution.
const clockTick = 10 * time.Millisecond

// ensure starts the clock if it is not running.
func (k *clock) ensure() {
	if k.running.Load() {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.running.Load() || k.stopped {
		return
	}
	k.stop, k.done = make(chan struct{}), make(chan struct{})
	k.ns.Store(time.Now().UnixNano())
	k.running.Store(true)
	go func() {
		defer close(k.done)
		t := time.NewTicker(clockTick)
		defer t.Stop()
		for {
			select {
			case <-k.stop:
				return
			case now := <-t.C:
				k.ns.Store(now.UnixNano())
			}
		}
	}()
}

// now returns the time, coarsely once the clock runs, exactly before.
func (k *clock) now() int64 {
	if k.running.Load() {
		return k.ns.Load()
	}
	return time.Now().UnixNano()
}

func (k *clock) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopped = true
	if k.running.Load() {
		close(k.stop)
		<-k.done
	}
}

// schedule sets when a hit on e must look at the clock: at fresh-until, or
// earlier where XFetch may start drawing. Entries that cannot be served
// stale or refreshed early (absences; values without stale windows or a
// load duration) are left to their L1 TTL, which ends by fresh-until.
func (c *Cache[V]) schedule(e *entry[V]) {
	early := c.beta > 0 && e.delta > 0
	switch {
	case e.fresh == 0, e.fresh >= e.hard && !early:
		e.checkAt = 0
	case early:
		e.checkAt = e.fresh - int64(xfetchSpan*c.beta*float64(e.delta))
	default:
		e.checkAt = e.fresh
	}
	if e.checkAt != 0 {
		c.clock.ensure()
	}
}

// xfetch draws whether a read of e at now starts an early refresh.
func (c *Cache[V]) xfetch(e *entry[V], now int64) bool {
	if c.beta <= 0 || e.delta <= 0 {
		return false
	}
	return float64(now)-float64(e.delta)*c.beta*math.Log(rand.Float64()) >= float64(e.fresh)
}

// staleUntil is how long e may be served stale at once: StaleTTL past
// fresh-until (as the reader's options say), never past what L2 keeps.
func staleUntil[V any](e *entry[V], o callOptions) int64 {
	return min(e.fresh+int64(o.staleTTL), e.hard)
}

// refreshAsync starts one background refresh of key in this process, unless
// one is running or the cache is closing. than is the fresh-until of the
// entry that asked: a value fresher than it in L2 means another process
// refreshed already.
func (c *Cache[V]) refreshAsync(ctx context.Context, key string, load LoadFunc[V], o callOptions, than int64) {
	fl, leader := c.flights.join("r" + key)
	if !leader {
		return
	}
	fctx, cancel := c.detach(ctx)
	started := c.spawn(func() {
		defer cancel()
		c.flights.finish("r"+key, fl, c.safely(key, func() flightResult[V] { return c.refresh(fctx, key, load, o, than) }))
	})
	if !started {
		cancel()
		c.flights.finish("r"+key, fl, flightResult[V]{err: ErrClosed})
		return
	}
	c.counters.refreshes.Add(1)
}

// refresh reloads key ahead of or past its fresh-until, for refreshAsync.
func (c *Cache[V]) refresh(ctx context.Context, key string, load LoadFunc[V], o callOptions, than int64) flightResult[V] {
	if c.l2 == nil || c.l2.rdb == nil || c.noFence {
		return c.reload(ctx, key, load, o, c.fence.ticket(key, o.tags), time.Now().UnixNano(), nil, nil)
	}
	t := c.fence.ticket(key, o.tags)
	started := time.Now().UnixNano()
	b, err := c.l2.get(ctx, c.l2Key(key))
	switch {
	case errors.Is(err, errL2Miss):
		return c.fill(ctx, key, load, o) // gone from L2: an ordinary leased load
	case err != nil:
		c.l2Failed(ctx, "refresh", key, err)
		return flightResult[V]{tier: "l2", err: err}
	}
	e, ttl, state := c.decodeL2(ctx, key, b)
	switch {
	case state != l2Value:
		return c.fill(ctx, key, load, o)
	case e.fresh > than:
		// Another process refreshed it already.
		e.filled = started
		c.install(key, e, c.l1TTL(ttl), t, false)
		return flightResult[V]{e: e, tier: "l2"}
	}
	return c.reload(ctx, key, load, o, t, started, b, e)
}

// casReplace sets KEYS[1] to ARGV[2] for ARGV[3] ms if it still holds the
// bytes whose SHA-1 is ARGV[1]: a refresh replaces the value it read, and
// nothing written since.
var casReplace = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and redis.sha1hex(v) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0`)

// reload loads key again while L2 still holds old (the value read, stale
// or about to be, decoded as oldE; both nil without L2). One process in the
// cluster reloads: it holds a refresh lease beside the key, and the others
// wait for its value. The new value replaces old only if old is still
// there (a Set or Delete meanwhile wins). If the load fails, oldE is served
// while within MaxStale.
func (c *Cache[V]) reload(ctx context.Context, key string, load LoadFunc[V], o callOptions, t ticket, started int64, old []byte, oldE *entry[V]) flightResult[V] {
	var token []byte
	rk := c.cfg.Namespace + "#refresh:" + key
	write := c.l2 != nil
	if old != nil {
		token = newLease(c.cfg.LeaseTTL)
		held := true
		err := c.l2.call(ctx, func(ctx context.Context) (err error) {
			held, err = c.l2.rdb.SetNX(ctx, rk, token, c.cfg.LeaseTTL).Result()
			return err
		})
		switch {
		case err != nil:
			// L2 is failing: load, serve, and leave L2 alone.
			c.l2Failed(ctx, "refresh-lease", key, err)
			write, token = false, nil
		case !held:
			if res, ok := c.awaitRefresh(ctx, key, rk, t, started, old); ok {
				return res
			}
			write, token = false, nil
		}
		defer func() {
			if token != nil {
				if err := c.l2.releaseLease(ctx, rk, token); err != nil {
					c.l2Failed(ctx, "refresh-release", key, err)
				}
			}
		}()
	}
	e, err := c.runLoad(ctx, key, load)
	if err != nil {
		if oldE != nil && c.clock.now() < oldE.hard {
			c.counters.staleOnError.Add(1)
			return flightResult[V]{e: oldE, tier: "stale"}
		}
		return flightResult[V]{tier: "loader", err: err}
	}
	e.filled = started
	ttl := c.cacheTTL(e, o)
	if ttl < 0 {
		return flightResult[V]{e: e, tier: "loader"}
	}
	b, l2ttl, err := c.encode(key, e, c.jitter(ttl), o)
	if err != nil {
		c.cfg.Logger.WarnContext(ctx, "tiercache: loaded value not cached", "namespace", c.cfg.Namespace, "key", key, "err", err)
		return flightResult[V]{e: e, tier: "loader"}
	}
	var l2err error
	switch {
	case !write:
	case old == nil:
		l2err = c.writeL2(ctx, key, b, l2ttl)
	default:
		sum := sha1.Sum(old)
		var n int
		l2err = c.l2.call(ctx, func(ctx context.Context) (err error) {
			n, err = casReplace.Run(ctx, c.l2.rdb, []string{c.l2Key(key)}, hex.EncodeToString(sum[:]), b, max(l2ttl.Milliseconds(), 1)).Int()
			return err
		})
		if l2err == nil && n == 0 {
			// Written or deleted since we read it: ours may be older.
			c.counters.leaseLost.Add(1)
			return flightResult[V]{e: e, tier: "loader"}
		}
		if l2err == nil && len(o.tags) > 0 {
			l2err = c.tagWritten(ctx, key, o.tags, l2ttl)
		}
	}
	if l2err != nil {
		c.l2Failed(ctx, "refresh-write", key, l2err)
	}
	c.install(key, e, c.l1TTL(l2ttl), t, true)
	return flightResult[V]{e: e, tier: "loader", err: c.strict(l2err)}
}

// awaitRefresh polls L2, as awaitLease does, while another process
// refreshes key, until it holds a value fresher than than. ok is false if
// none came within LeaseTTL.
func (c *Cache[V]) awaitRefresh(ctx context.Context, key, rk string, t ticket, started int64, old []byte) (flightResult[V], bool) {
	c.counters.leaseWaits.Add(1)
	for wait := c.leaseWait(); wait.next(ctx); {
		var b []byte
		var leased int64
		err := c.l2.call(ctx, func(ctx context.Context) error {
			cmds, err := c.l2.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				p.Get(ctx, c.l2Key(key))
				p.Exists(ctx, rk)
				return nil
			})
			if err != nil && !errors.Is(err, redis.Nil) {
				return err
			}
			b, _ = cmds[0].(*redis.StringCmd).Bytes()
			leased = cmds[1].(*redis.IntCmd).Val()
			return nil
		})
		switch {
		case err != nil:
			return flightResult[V]{}, false
		case bytes.Equal(b, old):
			if leased == 0 {
				return flightResult[V]{}, false // the refresher gave up
			}
			continue
		}
		// The key changed: the refresh landed, or a write or delete.
		if b == nil {
			return flightResult[V]{}, false
		}
		if e, ttl, state := c.decodeL2(ctx, key, b); state == l2Value {
			e.filled = started
			c.install(key, e, c.l1TTL(ttl), t, false)
			return flightResult[V]{e: e, tier: "l2"}, true
		}
		return flightResult[V]{}, false
	}
	return flightResult[V]{}, false
}
