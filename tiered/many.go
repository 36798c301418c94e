package tiered

import (
	"cmp"
	"context"
	"errors"
	"fmt"

	"github.com/tiercache/tiercache/internal/flight"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// LoadManyFunc loads the values for keys missing from both tiers, in one
// call. A key missing from the returned map does not exist in the source;
// it is cached as absent, as ErrNotFound is for LoadFunc.
type LoadManyFunc[V any] func(ctx context.Context, missing []string) (map[string]V, error)

// GetMany returns the values cached for keys: from L1, then from L2 for the
// others, in one MGET (one per hash slot on Redis Cluster). Keys in neither tier, or cached as
// absent, are not in the map. L2 failures are handled as in Get.
func (c *Cache[V]) GetMany(ctx context.Context, keys []string) (map[string]V, error) {
	return c.getMany(ctx, "tiered.GetMany", keys, nil, nil)
}

// GetOrLoadMany returns the values for keys: from L1, then from L2 in one
// pipelined round trip, then from one call of loadMany with exactly the
// keys still missing, waiting for those another caller, here or (through L2
// leases) elsewhere, is loading. Keys that loadMany does not return are
// cached as absent and left out of the map. If loadMany fails, it returns
// what it has and an error. Options apply to the values loaded.
func (c *Cache[V]) GetOrLoadMany(ctx context.Context, keys []string, loadMany LoadManyFunc[V], opts ...Option) (map[string]V, error) {
	if loadMany == nil {
		return nil, errors.New("tiered: GetOrLoadMany with a nil loader")
	}
	return c.getMany(ctx, "tiered.GetOrLoadMany", keys, loadMany, opts)
}

func (c *Cache[V]) getMany(ctx context.Context, op string, keys []string, load LoadManyFunc[V], opts []Option) (out map[string]V, err error) {
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return nil, err
		}
	}
	o, err := c.options(opts)
	if err != nil {
		return nil, err
	}
	if c.isClosed() {
		return nil, ErrClosed
	}
	ctx, span := c.tracer.Start(ctx, op, trace.WithAttributes(
		attribute.String("tiercache.namespace", c.cfg.Namespace), attribute.Int("tiercache.keys", len(keys))))
	defer endSpan(span, &err)

	out, missing, fallback := c.l1Many(keys, o, c.refresher(ctx, load, o))
	span.SetAttributes(attribute.Int("tiercache.l1_misses", len(missing)))
	if len(missing) == 0 {
		return out, nil
	}
	if load == nil {
		var err error
		for i, r := range c.fill(ctx, missing, nil, o, 0) {
			if r.e != nil && !r.e.Value.negative {
				out[missing[i]] = r.e.Value.v
			}
			err = cmp.Or(err, r.err)
		}
		return out, err
	}

	return out, c.loadMany(ctx, out, missing, fallback, many(load), o)
}

// l1Many serves keys from L1 into out; fallback keeps stale-if-error copies.
func (c *Cache[V]) l1Many(keys []string, o callOptions, refresh func(string, int64)) (out map[string]V, missing []string, fallback map[string]*entry[V]) {
	out = make(map[string]V, len(keys))
	seen := make(map[string]struct{}, len(keys))
	now := c.clock.Now()
	for _, k := range keys {
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		if c.hot != nil {
			c.hot.Sample(k)
		}
		if e, ok := c.l1.Get(k); ok && c.servable(e) {
			st := c.state(e, now, o, refresh != nil)
			if c.serve(k, e, st, refresh) {
				c.counters.l1Hits.add(k)
				if !e.Value.negative {
					out[k] = e.Value.v
				}
				continue
			}
			if st == entryStaleIfError {
				if fallback == nil {
					fallback = make(map[string]*entry[V])
				}
				fallback[k] = e
			}
		}
		c.counters.l1Misses.Add(1)
		missing = append(missing, k)
	}
	return out, missing, fallback
}

// loadMany fills the missing keys whose flights it leads in one fill, and
// puts what all their flights found into out.
func (c *Cache[V]) loadMany(ctx context.Context, out map[string]V, missing []string, fallback map[string]*entry[V], load loader[V], o callOptions) error {
	fls := make(map[string]*flight.Flight[flightResult[V]], len(missing))
	var led []string
	var ledFls []*flight.Flight[flightResult[V]]
	for _, k := range missing {
		fl, leader := c.flights.Join(flightKey{flightLoad, k})
		fls[k] = fl
		if leader {
			led, ledFls = append(led, k), append(ledFls, fl)
		}
	}
	if len(led) > 0 {
		fctx, cancel := c.detach(ctx)
		if !c.spawn(func() { defer cancel(); c.fillLed(fctx, led, ledFls, load, o) }) {
			cancel()
			for i, k := range led {
				c.flights.Finish(flightKey{flightLoad, k}, ledFls[i], flightResult[V]{err: ErrClosed})
			}
		}
	}
	var failed int
	var firstErr error
	for _, k := range missing {
		fl := fls[k]
		select {
		case <-fl.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
		fr, shared := fl.Result()
		if shared {
			c.counters.shared.Add(1)
		}
		if e := fallback[k]; fr.e == nil && fr.err != nil && e != nil && withinMaxStale(e, c.clock.Now()) {
			c.counters.staleOnError.Add(1)
			fr = flightResult[V]{e: e, tier: tierStale}
		}
		if fr.tier == tierStale {
			c.counters.staleServed.Add(1)
		}
		if fr.e != nil && !fr.e.Value.negative {
			out[k] = fr.e.Value.v
		}
		if fr.err != nil && (fr.e == nil || c.cfg.Strict) {
			if failed++; firstErr == nil {
				firstErr = fr.err
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("tiered: %d of %d keys not loaded: %w", failed, len(missing), firstErr)
	}
	return nil
}

// fillLed fills keys and finishes their flights fls, even after a panic.
func (c *Cache[V]) fillLed(ctx context.Context, keys []string, fls []*flight.Flight[flightResult[V]], load loader[V], o callOptions) {
	var res []flightResult[V]
	defer func() {
		var perr error
		if r := recover(); r != nil {
			perr = fmt.Errorf("tiered: batch fill panicked: %v", r)
		}
		for i, k := range keys {
			var r flightResult[V]
			if i < len(res) {
				r = res[i]
			}
			if perr != nil && r.e == nil {
				r.err = perr
			}
			c.flights.Finish(flightKey{flightLoad, k}, fls[i], r)
		}
	}()
	res = c.fill(ctx, keys, load, o, 0)
}

// serve reports whether e, in state st, may be served, and refreshes it if due.
func (c *Cache[V]) serve(key string, e *entry[V], st freshness, refresh func(string, int64)) bool {
	switch st {
	case entryRefreshEarly, entryStale:
		if refresh != nil {
			refresh(key, e.Value.fresh)
		}
		if st == entryStale {
			c.counters.staleServed.Add(1)
		}
		return true
	case entryFresh:
		return true
	}
	return false
}

// refresher returns what refreshes one key with load; nil without a loader.
func (c *Cache[V]) refresher(ctx context.Context, load LoadManyFunc[V], o callOptions) func(string, int64) {
	if load == nil {
		return nil
	}
	return func(key string, than int64) { c.refreshAsync(ctx, key, many(load), o, than) }
}
