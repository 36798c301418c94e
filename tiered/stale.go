package tiered

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"math"
	"math/rand/v2"
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

// schedule sets when a hit on e must look at the clock: at fresh-until, or
// earlier where XFetch may start drawing. Entries that cannot be served
// stale or refreshed early (absences; values without stale windows or a
// load duration) are left to their L1 TTL, which ends by fresh-until.
func (c *Cache[V]) schedule(e *entry[V]) {
	early := c.beta > 0 && e.Value.delta > 0
	switch {
	case e.Value.fresh == 0, e.Value.fresh >= e.Value.hard && !early:
		e.Value.checkAt = 0
	case early:
		e.Value.checkAt = e.Value.fresh - int64(xfetchSpan*c.beta*float64(e.Value.delta))
	default:
		e.Value.checkAt = e.Value.fresh
	}
	if e.Value.checkAt != 0 {
		c.clock.Start()
	}
}

// xfetch draws whether a read of e at now starts an early refresh.
func (c *Cache[V]) xfetch(e *entry[V], now int64) bool {
	if c.beta <= 0 || e.Value.delta <= 0 {
		return false
	}
	return float64(now)-float64(e.Value.delta)*c.beta*math.Log(rand.Float64()) >= float64(e.Value.fresh)
}

// freshness is what an entry is to a read at some time.
type freshness uint8

const (
	entryFresh        freshness = iota // serve it
	entryRefreshEarly                  // serve it, and refresh it now: this read drew XFetch
	entryStale                         // past its TTL, within StaleTTL: serve it and refresh it
	entryStaleIfError                  // past StaleTTL, within MaxStale: serve it only if refreshing fails
	entryExpired                       // do not serve it
)

// state is the one place that decides an entry's freshness: e's at now,
// for a read with options o (whose StaleTTL may differ from the writer's).
// draw lets a fresh entry near its TTL draw an early refresh; only reads
// with a loader can refresh.
func (c *Cache[V]) state(e *entry[V], now int64, o callOptions, draw bool) freshness {
	switch {
	case quietAt(e, now):
		return entryFresh
	case now < e.Value.fresh:
		if draw && c.xfetch(e, now) {
			return entryRefreshEarly
		}
		return entryFresh
	case now < min(e.Value.fresh+int64(o.staleTTL), e.Value.hard): // never past what L2 keeps
		return entryStale
	case withinMaxStale(e, now):
		return entryStaleIfError
	}
	return entryExpired
}

// quietAt reports that e needs no look at its freshness at now: it is
// fresh, and not yet in XFetch's window. L1 hits ask only this, on the
// coarse clock, and not at all for entries that the L1 TTL alone bounds
// (checkAt 0).
func quietAt[V any](e *entry[V], now int64) bool {
	return e.Value.checkAt == 0 || now < e.Value.checkAt
}

// withinMaxStale reports whether e may still be served when refreshing it
// fails: a stale-if-error copy, kept aside by a read, is checked again
// when the refresh has failed.
func withinMaxStale[V any](e *entry[V], now int64) bool { return now < e.Value.hard }

// refreshAsync starts one background refresh of key in this process, unless
// one is running or the cache is closing. than is the fresh-until of the
// entry that asked: a value fresher than it in L2 means another process
// refreshed already.
func (c *Cache[V]) refreshAsync(ctx context.Context, key string, load LoadFunc[V], o callOptions, than int64) {
	fl, leader := c.flights.join(flightKey{flightRefresh, key})
	if !leader {
		return
	}
	fctx, cancel := c.detach(ctx)
	started := c.spawn(func() {
		defer cancel()
		c.flights.finish(flightKey{flightRefresh, key}, fl, c.safely(key, func() flightResult[V] { return c.refresh(fctx, key, load, o, than) }))
	})
	if !started {
		cancel()
		c.flights.finish(flightKey{flightRefresh, key}, fl, flightResult[V]{err: ErrClosed})
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
		return flightResult[V]{tier: tierL2, err: err}
	}
	e, ttl, state := c.decodeL2(ctx, key, b)
	switch {
	case state != l2Value:
		return c.fill(ctx, key, load, o)
	case e.Value.fresh > than:
		// Another process refreshed it already.
		e.Value.filled = started
		c.install(key, e, c.l1TTL(ttl), t, false)
		return flightResult[V]{e: e, tier: tierL2}
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
		if oldE != nil && withinMaxStale(oldE, c.clock.Now()) {
			c.counters.staleOnError.Add(1)
			return flightResult[V]{e: oldE, tier: tierStale}
		}
		return flightResult[V]{tier: tierLoader, err: err}
	}
	e.Value.filled = started
	ttl := c.cacheTTL(e, o)
	if ttl < 0 {
		return flightResult[V]{e: e, tier: tierLoader}
	}
	b, l2ttl, err := c.encode(key, e, c.jitter(ttl), o)
	if err != nil {
		c.cfg.Logger.WarnContext(ctx, "tiercache: loaded value not cached", "namespace", c.cfg.Namespace, "key", key, "err", err)
		return flightResult[V]{e: e, tier: tierLoader}
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
			return flightResult[V]{e: e, tier: tierLoader}
		}
		if l2err == nil && len(o.tags) > 0 {
			l2err = c.tagWritten(ctx, key, o.tags, l2ttl)
		}
	}
	if l2err != nil {
		c.l2Failed(ctx, "refresh-write", key, l2err)
	}
	c.install(key, e, c.l1TTL(l2ttl), t, true)
	return flightResult[V]{e: e, tier: tierLoader, err: c.strict(l2err)}
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
			e.Value.filled = started
			c.install(key, e, c.l1TTL(ttl), t, false)
			return flightResult[V]{e: e, tier: tierL2}, true
		}
		return flightResult[V]{}, false
	}
	return flightResult[V]{}, false
}
