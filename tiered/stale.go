package tiered

import (
	"context"
	"math"
	"math/rand/v2"
)

// Freshness. An entry is fresh until fresh-until, then served stale while a
// refresh runs until fresh-until + StaleTTL, or while refreshing fails until
// fresh-until + MaxStale; L2 keeps it until the later (hard). XFetch
// (Vattani et al., VLDB 2015) refreshes hot keys early, so that readers never
// wait: a read refreshes when now − δ·β·ln(rand) ≥ fresh-until (δ: load time).

// xfetchSpan is how many δ·β before fresh-until a hit starts to draw: an
// earlier draw would win with probability below e^−10.
const xfetchSpan = 10

// schedule sets when a hit on e must look at the clock: where XFetch may
// draw, else at fresh-until if e can be served stale, else never, since its
// L1 TTL ends by fresh-until.
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

type freshness uint8

const (
	entryFresh        freshness = iota // serve it
	entryRefreshEarly                  // serve it, and refresh it now: this read drew XFetch
	entryStale                         // past its TTL, within StaleTTL: serve it and refresh it
	entryStaleIfError                  // past StaleTTL, within MaxStale: serve it only if refreshing fails
	entryExpired                       // do not serve it
)

// state is the one place that decides e's freshness at now, for a read with
// options o; draw (a read with a loader) lets it draw an early refresh.
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

// quietAt reports that e is fresh and before XFetch's window: all a hit asks.
func quietAt[V any](e *entry[V], now int64) bool {
	return e.Value.checkAt == 0 || now < e.Value.checkAt
}

// withinMaxStale reports whether e may be served when refreshing it fails.
func withinMaxStale[V any](e *entry[V], now int64) bool { return now < e.Value.hard }

// refreshAsync starts a background refresh of key unless one runs. than is
// the asking entry's fresh-until: a fresher value in L2 was refreshed already.
func (c *Cache[V]) refreshAsync(ctx context.Context, key string, load loader[V], o callOptions, than int64) {
	fkey := flightKey{flightRefresh, key}
	fl, leader := c.flights.Join(fkey)
	if !leader {
		return
	}
	fctx, cancel := c.detach(ctx)
	started := c.spawn(func() {
		defer cancel()
		c.flights.Finish(fkey, fl, c.safely(key, func() flightResult[V] { return c.fill(fctx, []string{key}, load, o, than)[0] }))
	})
	if !started {
		cancel()
		c.flights.Finish(fkey, fl, flightResult[V]{err: ErrClosed})
		return
	}
	c.counters.refreshes.Add(1)
}
