package tiered

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// LoadManyFunc loads the values for keys missing from both tiers, in one
// call. A key missing from the returned map does not exist in the source;
// it is cached as absent, as ErrNotFound is for LoadFunc.
type LoadManyFunc[V any] func(ctx context.Context, missing []string) (map[string]V, error)

// GetMany returns the values cached for keys: from L1, then from L2 for the
// others, in one pipelined round trip. Keys in neither tier, or cached as
// absent, are not in the map. L2 failures are handled as in Get.
func (c *Cache[V]) GetMany(ctx context.Context, keys []string) (map[string]V, error) {
	return c.getMany(ctx, "tiered.GetMany", keys, nil, nil)
}

// GetOrLoadMany returns the values for keys: from L1, then from L2 in one
// pipelined round trip, then from one call of loadMany with exactly the
// keys still missing. Keys that another caller in this process, single or
// batch, is already reading or loading are not loaded again: this call
// waits for them. In L2 the keys are leased as in GetOrLoad, so keys being
// loaded by another process are waited for too.
//
// Keys that loadMany does not return are cached as absent and are not in
// the map. If loadMany fails, GetOrLoadMany returns what it has and an
// error. Options apply to the values loaded.
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

	out = make(map[string]V, len(keys))
	var missing []string
	var fallback map[string]*entry[V] // L1 copies past their stale window, for stale-if-error
	seen := make(map[string]struct{}, len(keys))
	now := c.clock.Now()
	refresh := c.refresher(ctx, load, o)
	for _, k := range keys {
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		if c.hot != nil {
			c.hot.sample(k)
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
	span.SetAttributes(attribute.Int("tiercache.l1_misses", len(missing)))
	if len(missing) == 0 {
		return out, nil
	}
	if load == nil {
		// A read: no flights to share, one pipelined L2 read.
		res, err := c.readMany(ctx, missing, o)
		for k, e := range res {
			if !e.Value.negative {
				out[k] = e.Value.v
			}
		}
		return out, c.strict(err)
	}

	// Join the flights of the missing keys: lead those nobody is filling,
	// wait for the others.
	fls := make(map[string]*flight[V], len(missing))
	var led []string
	for _, k := range missing {
		fl, leader := c.flights.join(flightKey{flightLoad, k})
		fls[k] = fl
		if leader {
			led = append(led, k)
		}
	}
	if len(led) > 0 {
		ledFls := make([]*flight[V], len(led))
		for i, k := range led {
			ledFls[i] = fls[k]
		}
		fctx, cancel := c.detach(ctx)
		if !c.spawn(func() { defer cancel(); c.fillMany(fctx, led, ledFls, load, o) }) {
			cancel()
			for i, k := range led {
				c.flights.finish(flightKey{flightLoad, k}, ledFls[i], flightResult[V]{err: ErrClosed})
			}
		}
	}
	var failed int
	var firstErr error
	for _, k := range missing {
		fl := fls[k]
		select {
		case <-fl.done:
		case <-ctx.Done():
			return out, ctx.Err()
		}
		if fl.callers > 1 {
			c.counters.shared.Add(1)
		}
		fr := fl.res
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
		return out, fmt.Errorf("tiered: %d of %d keys not loaded: %w", failed, len(missing), firstErr)
	}
	return out, nil
}

// readMany reads keys from L2 in one round trip and fills L1 with what it
// finds. Without the go-redis client (a Store alone) it reads key by key.
func (c *Cache[V]) readMany(ctx context.Context, keys []string, o callOptions) (map[string]*entry[V], error) {
	found := make(map[string]*entry[V], len(keys))
	if c.l2 == nil {
		return found, nil
	}
	tickets := make([]ticket, len(keys))
	for i, k := range keys {
		tickets[i] = c.fence.ticket(k, o.tags)
	}
	started := time.Now().UnixNano()
	var raw [][]byte
	var err error
	if c.l2.rdb != nil {
		l2keys := make([]string, len(keys))
		for i, k := range keys {
			l2keys[i] = c.l2Key(k)
		}
		if raw, err = c.l2.getMany(ctx, l2keys); err != nil {
			c.l2Failed(ctx, "get-many", keys[0], err)
			c.counters.l2Misses.Add(int64(len(keys)))
			return found, err
		}
	} else {
		raw = make([][]byte, len(keys))
		for i, k := range keys {
			b, gerr := c.l2.get(ctx, c.l2Key(k))
			if gerr != nil && !errors.Is(gerr, errL2Miss) {
				c.l2Failed(ctx, "get", k, gerr)
				err = cmp.Or(err, gerr)
			}
			raw[i] = b
		}
	}
	for i, k := range keys {
		if raw[i] == nil {
			c.counters.l2Misses.Add(1)
			continue
		}
		e, ttl, state := c.decodeL2(ctx, k, raw[i])
		if state != l2Value || !c.usable(k, e, o, c.clock.Now(), nil) {
			c.counters.l2Misses.Add(1)
			continue
		}
		c.counters.l2Hits.Add(1)
		e.Value.filled = started
		c.install(k, e, c.l1TTL(ttl), tickets[i], false)
		found[k] = e
	}
	return found, err
}

// fillMany is fill for a batch: the keys this caller leads, whose flights
// it finishes. One pipelined L2 round trip reads the keys and leases the
// absent ones; keys another process is loading are waited for; then one
// loader call loads the rest and one pipelined round trip writes them.
func (c *Cache[V]) fillMany(ctx context.Context, keys []string, fls []*flight[V], load LoadManyFunc[V], o callOptions) {
	results := make(map[string]flightResult[V], len(keys))
	defer func() {
		// Every flight is finished, even after a panic (a codec's, say),
		// which would otherwise leave its callers waiting forever.
		var perr error
		if r := recover(); r != nil {
			perr = fmt.Errorf("tiered: batch fill panicked: %v", r)
		}
		for i, k := range keys {
			res := results[k]
			if perr != nil && res.e == nil {
				res.err = perr
			}
			c.flights.finish(flightKey{flightLoad, k}, fls[i], res)
		}
	}()
	tickets := make(map[string]ticket, len(keys))
	for _, k := range keys {
		tickets[k] = c.fence.ticket(k, o.tags)
	}
	started := time.Now().UnixNano()
	install := func(k string, e *entry[V], ttl time.Duration, tier tier) {
		e.Value.filled = started
		c.install(k, e, ttl, tickets[k], false)
		results[k] = flightResult[V]{e: e, tier: tier}
	}

	// What L2 has, leasing what it has not. Values past their stale window
	// are loaded again, and kept in stale for stale-if-error.
	leases := make(map[string][]byte)
	stale := make(map[string]*entry[V])
	var toLoad []string
	var l2err error
	switch {
	case c.l2 == nil:
		toLoad = keys
	case c.l2.rdb == nil || c.noFence:
		found, err := c.readMany(ctx, keys, o)
		l2err = err
		for _, k := range keys {
			if e, ok := found[k]; ok {
				results[k] = flightResult[V]{e: e, tier: tierL2}
			} else {
				toLoad = append(toLoad, k)
			}
		}
	default:
		if len(o.tags) > 0 {
			// The keys join their tags before their leases are taken: see fill.
			l2err = c.tagMany(ctx, keys, o.tags, o.ttl+c.cfg.LeaseTTL)
		}
		if l2err == nil {
			toLoad, l2err = c.leaseOrReadMany(ctx, keys, leases, stale, o, c.refresher(ctx, load, o), install)
		} else {
			toLoad = keys
		}
	}
	if len(toLoad) == 0 {
		return
	}

	loadStart := time.Now()
	vals, err := c.runLoadMany(ctx, toLoad, load)
	delta := int64(time.Since(loadStart))
	if err != nil {
		for _, k := range toLoad {
			results[k] = flightResult[V]{tier: tierLoader, err: err}
			if e := stale[k]; e != nil && withinMaxStale(e, c.clock.Now()) {
				c.counters.staleOnError.Add(1)
				results[k] = flightResult[V]{e: e, tier: tierStale}
			}
		}
		c.releaseMany(ctx, toLoad, leases)
		return
	}
	type fillReq struct {
		key  string
		e    *entry[V]
		b    []byte
		ttl  time.Duration
		drop bool // not to be cached
	}
	reqs := make([]fillReq, 0, len(toLoad))
	var unlease []string
	for _, k := range toLoad {
		e := &entry[V]{Value: item[V]{negative: true}}
		if v, ok := vals[k]; ok {
			e = &entry[V]{Value: item[V]{v: v, delta: delta}}
		}
		e.Value.filled = started
		r := fillReq{key: k, e: e, ttl: c.cacheTTL(e, o)}
		if r.ttl < 0 {
			r.drop = true
		} else {
			if r.b, r.ttl, err = c.encode(k, e, c.jitter(r.ttl), o); err != nil {
				c.cfg.Logger.WarnContext(ctx, "tiercache: loaded value not cached", "namespace", c.cfg.Namespace, "key", k, "err", err)
				r.drop = true
			}
		}
		if r.drop {
			unlease = append(unlease, k)
		}
		reqs = append(reqs, r)
		results[k] = flightResult[V]{e: e, tier: tierLoader, err: c.strict(l2err)}
	}
	c.releaseMany(ctx, unlease, leases)

	// One pipelined write of the leased values; a lease lost keeps its
	// value out of both tiers.
	var wkeys, wuser []string // L2 keys, and the same keys as callers know them
	var wleases, wvals [][]byte
	var wttls []time.Duration
	for _, r := range reqs {
		if lease, ok := leases[r.key]; ok && !r.drop {
			wkeys, wuser = append(wkeys, c.l2Key(r.key)), append(wuser, r.key)
			wleases, wvals, wttls = append(wleases, lease), append(wvals, r.b), append(wttls, r.ttl)
		}
	}
	lost := make(map[string]bool)
	if len(wkeys) > 0 {
		l, err := c.l2.fillMany(ctx, wkeys, wleases, wvals, wttls)
		if err != nil {
			_ = c.l2.releaseMany(context.WithoutCancel(ctx), wkeys, wleases)
			c.l2Failed(ctx, "fill-many", keys[0], err)
			l2err = err
		}
		var filled []string
		for i, key := range wuser {
			if err == nil && l[i] {
				lost[key] = true
				c.counters.leaseLost.Add(1)
			} else if err == nil {
				filled = append(filled, key)
			}
		}
		if len(o.tags) > 0 && len(filled) > 0 {
			if err := c.tagMany(ctx, filled, o.tags, slices.Max(wttls)); err != nil {
				l2err = err
			}
		}
	}
	for _, r := range reqs {
		if r.drop || lost[r.key] {
			continue
		}
		if _, leased := leases[r.key]; !leased && c.l2 != nil && (c.l2.rdb == nil || c.noFence) && l2err == nil {
			if err := c.writeL2(ctx, r.key, r.b, r.ttl); err != nil {
				l2err = err
			}
		}
		c.install(r.key, r.e, c.l1TTL(r.ttl), tickets[r.key], false)
		if l2err != nil {
			results[r.key] = flightResult[V]{e: r.e, tier: tierLoader, err: c.strict(l2err)}
		}
	}
	// One wait for ristretto, as a single load's install waits: callers
	// arriving after this batch must find its keys in L1.
	c.l1.Wait()
}

// leaseOrReadMany reads keys from L2 and leases the absent ones in one
// pipelined round trip. Values found are installed through install; keys
// leased go into leases and the returned list to load. Keys another process
// holds a lease on are polled, as awaitLease does, until they are filled,
// their lease can be taken, or LeaseTTL has passed (then they are loaded
// without writing L2).
func (c *Cache[V]) leaseOrReadMany(ctx context.Context, keys []string, leases map[string][]byte, stale map[string]*entry[V], o callOptions,
	refresh func(string, int64), install func(string, *entry[V], time.Duration, tier)) (toLoad []string, err error) {
	wait := c.leaseWait()
	pending := keys
	junk := make(map[string][]byte) // what a key held that we judged junk, for the next round to replace
	for round := 0; len(pending) > 0; round++ {
		l2keys := make([]string, len(pending))
		junks := make([][]byte, len(pending))
		for i, k := range pending {
			l2keys[i], junks[i] = c.l2Key(k), junk[k]
		}
		ls, held, cur, err := c.l2.leaseMany(ctx, l2keys, junks, c.cfg.LeaseTTL)
		if err != nil {
			// Some leases may have been taken (on Cluster, a pipeline
			// can fail on one node only): give back every one we made.
			_ = c.l2.releaseMany(context.WithoutCancel(ctx), l2keys, ls)
			c.l2Failed(ctx, "lease-many", pending[0], err)
			c.counters.l2Misses.Add(int64(len(pending)))
			return append(toLoad, pending...), err
		}
		var waiting []string
		for i, k := range pending {
			if held[i] {
				if round == 0 {
					c.counters.l2Misses.Add(1)
				}
				leases[k] = ls[i]
				toLoad = append(toLoad, k)
				continue
			}
			e, ttl, state := c.decodeL2(ctx, k, cur[i])
			switch state {
			case l2Value:
				c.counters.l2Hits.Add(1)
				if !c.usable(k, e, o, c.clock.Now(), refresh) {
					// Past its stale window: load it again. L2 keeps the old
					// value until a single GetOrLoad replaces it or it expires.
					stale[k] = e
					toLoad = append(toLoad, k)
					continue
				}
				install(k, e, c.l1TTL(ttl), tierL2)
			case l2Junk:
				// Corrupt, foreign or expired bytes, or a lease that never
				// ends: the next round leases the key in their place, if
				// they are still there. Without a next round (the bytes
				// came back again), load without writing L2.
				if round == 0 {
					c.counters.l2Misses.Add(1)
				}
				if _, again := junk[k]; again {
					toLoad = append(toLoad, k)
					continue
				}
				junk[k] = cur[i]
				waiting = append(waiting, k)
			case l2Lease:
				if round == 0 {
					c.counters.l2Misses.Add(1)
					c.counters.leaseWaits.Add(1)
				}
				waiting = append(waiting, k)
			}
		}
		pending = waiting
		if len(pending) > 0 && !wait.next(ctx) {
			return append(toLoad, pending...), nil
		}
	}
	return toLoad, nil
}

// usable reports whether e may be served at now (see serve).
func (c *Cache[V]) usable(key string, e *entry[V], o callOptions, now int64, refresh func(string, int64)) bool {
	return c.serve(key, e, c.state(e, now, o, refresh != nil), refresh)
}

// serve reports whether an entry in state st may be served, and starts
// the refresh that st asks for if refresh is not nil; a stale entry
// served is counted.
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

// refresher returns what starts a background refresh of one key for a
// batch, through its batch loader; nil without a loader.
func (c *Cache[V]) refresher(ctx context.Context, load LoadManyFunc[V], o callOptions) func(string, int64) {
	if load == nil {
		return nil
	}
	one := func(ctx context.Context, key string) (V, error) {
		var zero V
		vals, err := load(ctx, []string{key})
		if err != nil {
			return zero, err
		}
		v, ok := vals[key]
		if !ok {
			return zero, ErrNotFound
		}
		return v, nil
	}
	return func(key string, than int64) { c.refreshAsync(ctx, key, one, o, than) }
}

// releaseMany gives back the leases of keys that will not be filled.
func (c *Cache[V]) releaseMany(ctx context.Context, keys []string, leases map[string][]byte) {
	var lkeys []string
	var ls [][]byte
	for _, k := range keys {
		if l, ok := leases[k]; ok {
			lkeys, ls = append(lkeys, c.l2Key(k)), append(ls, l)
		}
	}
	if len(lkeys) > 0 {
		if err := c.l2.releaseMany(ctx, lkeys, ls); err != nil {
			c.l2Failed(ctx, "release-many", keys[0], err)
		}
	}
}

// tagMany adds every key to every tag.
func (c *Cache[V]) tagMany(ctx context.Context, keys, tags []string, ttl time.Duration) error {
	if err := c.l2.call(ctx, func(ctx context.Context) error { return c.l2.addTags(ctx, c.cfg.Namespace, keys, tags, ttl) }); err != nil {
		c.l2Failed(ctx, "tag", keys[0], err)
		return err
	}
	return nil
}

// runLoadMany calls load once (see guardLoad).
func (c *Cache[V]) runLoadMany(ctx context.Context, keys []string, load LoadManyFunc[V]) (vals map[string]V, err error) {
	err = c.guardLoad(ctx, func(ctx context.Context) (err error) {
		vals, err = load(ctx, keys)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tiered: load %d keys: %w", len(keys), err)
	}
	return vals, nil
}
