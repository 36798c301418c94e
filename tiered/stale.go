package tiered

import (
	"context"
	"math"
	"math/rand/v2"
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
func (c *Cache[V]) refreshAsync(ctx context.Context, key string, load loader[V], o callOptions, than int64) {
	fkey := flightKey{flightRefresh, key}
	fl, leader := c.flights.join(fkey)
	if !leader {
		return
	}
	fctx, cancel := c.detach(ctx)
	started := c.spawn(func() {
		defer cancel()
		c.flights.finish(fkey, fl, c.safely(key, func() flightResult[V] { return c.fill(fctx, []string{key}, load, o, than)[0] }))
	})
	if !started {
		cancel()
		c.flights.finish(fkey, fl, flightResult[V]{err: ErrClosed})
		return
	}
	c.counters.refreshes.Add(1)
}
