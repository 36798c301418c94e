package tiered

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tiercache/tiercache/internal/fence"
	"github.com/tiercache/tiercache/internal/l2"
)

// The fill protocol. Every miss, single or batch, and every background
// refresh goes through fill, a single key as a batch of one:
//
//  1. take a fence ticket per key, before anything is read;
//  2. read L2, one round trip (an MGET), and serve what may be served;
//  3. lease what must be loaded: an L2 lease (SET NX in the key's place)
//     for a key L2 lacks, a refresh lease (beside the key) for a value L2
//     holds but is to be replaced; wait for keys another process loads;
//  4. load the rest in one loader call;
//  5. write L2 only through a lease still held (compare-and-set), then L1
//     through the ticket.
//
// A single key is read with a plain GET, so that a hit does not pay the
// lease script; a batch to load skips step 2, since the pipelined lease
// script returns what a key holds when it does not lease it.

// loader loads keys in one call; a key it leaves out does not exist.
type loader[V any] func(ctx context.Context, keys []string) (map[string]V, error)

// one makes a loader of a LoadFunc, for a batch of one key.
func one[V any](load LoadFunc[V]) loader[V] {
	if load == nil {
		return nil
	}
	return func(ctx context.Context, keys []string) (map[string]V, error) {
		v, err := load(ctx, keys[0])
		switch {
		case errors.Is(err, ErrNotFound):
			return nil, nil
		case err != nil:
			return nil, err
		}
		return map[string]V{keys[0]: v}, nil
	}
}

func many[V any](load LoadManyFunc[V]) loader[V] {
	if load == nil {
		return nil
	}
	return loader[V](load)
}

// filling is one key of a fill.
type filling[V any] struct {
	key  string
	t    fence.Ticket
	res  flightResult[V]
	done bool // res is final
	read bool // read from L2 (and counted) before any lease

	junk  []byte    // what L2 held that was judged junk, which a lease may replace
	lease []byte    // the L2 lease held on the key
	old   []byte    // the value L2 holds that the load replaces (under the refresh lease)
	oldE  *entry[V] // old decoded, or an L1 copy: served if the load fails, within MaxStale
	rkey  string    // the refresh lease's key
	rtok  []byte    // the refresh lease held
	plain bool      // write L2 with a plain SET: no lease can be had (a gocache Store)

	e    *entry[V] // loaded
	b    []byte
	ttl  time.Duration
	drop bool // not to be cached
}

// fill runs the protocol for keys, whose flights the caller leads, and
// returns their results in order. A nil load makes it a read; a nonzero
// than a refresh, which reloads a value in L2 unless it is fresher than than.
func (c *Cache[V]) fill(ctx context.Context, keys []string, load loader[V], o callOptions, than int64) []flightResult[V] {
	fs := make([]filling[V], len(keys))
	for i, k := range keys {
		fs[i] = filling[V]{key: k, t: c.fence.Ticket(k, o.tags)}
	}
	started := c.clock.Exact()
	if than == 0 {
		c.recheckL1(fs, o)
	}
	var l2err error
	if load == nil || than != 0 || len(keys) == 1 || c.l2 == nil || c.l2.Redis() == nil {
		l2err = c.readL2(ctx, fs, load, o, than, started)
	} // else the lease script reads

	switch {
	case load == nil:
		return results(fs, flightResult[V]{tier: tierNone, err: c.strict(l2err)})
	case than != 0 && l2err != nil:
		// Readers keep their copies rather than every process reloading.
		return results(fs, flightResult[V]{tier: tierL2, err: l2err})
	}
	if l2err == nil && c.l2 != nil {
		l2err = c.leaseAll(ctx, fs, load, o, started)
	}
	defer c.releaseRefreshes(ctx, fs)
	toLoad := pending(fs)
	if len(toLoad) == 0 {
		return results(fs, flightResult[V]{})
	}
	loadStart := c.clock.Exact()
	vals, err := c.runLoad(ctx, keyList(toLoad), load)
	delta := c.clock.Exact() - loadStart
	if err != nil {
		for _, f := range toLoad {
			f.res, f.done = flightResult[V]{tier: tierLoader, err: err}, true
			if f.oldE != nil && withinMaxStale(f.oldE, c.clock.Now()) {
				c.counters.staleOnError.Add(1)
				f.res = flightResult[V]{e: f.oldE, tier: tierStale}
			}
		}
		c.releaseLeases(ctx, toLoad)
		return results(fs, flightResult[V]{})
	}
	c.encodeLoaded(ctx, toLoad, vals, o, started, delta, l2err)
	if l2err == nil {
		l2err = c.writeLoaded(ctx, toLoad, o)
	}
	for _, f := range toLoad {
		if f.drop {
			continue
		}
		c.install(f.key, f.e, c.l1TTL(f.ttl), f.t, len(keys) == 1)
		f.res, f.done = flightResult[V]{e: f.e, tier: tierLoader, err: c.strict(l2err)}, true
	}
	if len(keys) > 1 {
		// Later callers must find the keys in L1 (one key's install waited).
		c.l1.Wait()
	}
	return results(fs, flightResult[V]{})
}

// recheckL1 serves the keys that another flight put into L1 since the
// caller missed, rather than reading L2 again.
func (c *Cache[V]) recheckL1(fs []filling[V], o callOptions) {
	now := c.clock.Now()
	for i := range fs {
		f := &fs[i]
		if e, ok := c.l1.Lookup(f.key); ok && c.servable(e) && c.state(e, now, o, false) == entryFresh {
			f.res, f.done = flightResult[V]{e: e, tier: tierL1}, true
		}
	}
}

// readL2 reads the keys not done from L2 and serves what it finds; the rest
// need a lease (a miss, a lease, junk, or in old a value to replace).
func (c *Cache[V]) readL2(ctx context.Context, fs []filling[V], load loader[V], o callOptions, than, started int64) error {
	var one [1]int
	idx := one[:0]
	for i := range fs {
		if !fs[i].done {
			idx = append(idx, i)
		}
	}
	if c.l2 == nil || len(idx) == 0 {
		return nil
	}
	raw, err := c.getL2(ctx, fs, idx)
	if err != nil {
		c.counters.l2Misses.Add(int64(len(idx)))
		return err
	}
	now := c.clock.Now()
	for j, i := range idx {
		f := &fs[i]
		f.read = true
		if raw[j] == nil {
			c.counters.l2Misses.Add(1)
			continue
		}
		e, ttl, state := c.decodeL2(ctx, f.key, raw[j])
		switch state {
		case l2Junk:
			f.junk = raw[j]
			fallthrough
		case l2Lease:
			c.counters.l2Misses.Add(1)
			continue
		}
		c.counters.l2Hits.Add(1)
		c.found(ctx, f, raw[j], e, ttl, load, o, than, started, now)
	}
	return nil
}

// found serves a value read from L2 as its freshness allows, refreshing it
// if due; one to replace (past its stale window, or not fresher than than)
// goes to f.old.
func (c *Cache[V]) found(ctx context.Context, f *filling[V], b []byte, e *entry[V], ttl time.Duration, load loader[V], o callOptions, than, started, now int64) {
	e.Value.filled = started
	t := tierL2
	st := entryFresh // a refresh decides by than alone
	if than == 0 {
		st = c.state(e, now, o, load != nil)
	}
	switch {
	case than != 0 && e.Value.fresh <= than:
		f.old, f.oldE = b, e // a refresh, and nobody refreshed it yet
		return
	case than != 0: // another process refreshed it already
	case st == entryFresh:
	case st == entryRefreshEarly, st == entryStale:
		if load != nil {
			c.refreshAsync(ctx, f.key, load, o, e.Value.fresh)
		}
		if st == entryStale {
			t = tierStale
		}
	default:
		// Past its stale window: a load replaces it (see oldE); a read misses.
		if load != nil {
			f.old, f.oldE = b, e
		} else {
			f.res, f.done = flightResult[V]{tier: tierNone}, true
		}
		return
	}
	c.install(f.key, e, c.l1TTL(ttl), f.t, false)
	f.res, f.done = flightResult[V]{e: e, tier: t}, true
}

// getL2 returns the bytes under the keys fs[idx] (nil for none): one MGET
// with Redis for several keys, else a GET per key (cheaper for one).
func (c *Cache[V]) getL2(ctx context.Context, fs []filling[V], idx []int) ([][]byte, error) {
	if c.l2.Redis() != nil && len(idx) > 1 {
		l2keys := make([]string, len(idx))
		for j, i := range idx {
			l2keys[j] = c.l2Key(fs[i].key)
		}
		raw, err := c.l2.GetMany(ctx, l2keys)
		if err != nil {
			c.l2Failed(ctx, "get", fs[idx[0]].key, err)
		}
		return raw, err
	}
	raw := make([][]byte, len(idx))
	for j, i := range idx {
		b, err := c.l2.Get(ctx, c.l2Key(fs[i].key))
		switch {
		case errors.Is(err, l2.ErrMiss), errors.Is(err, l2.ErrWrongType):
		case err != nil:
			c.l2Failed(ctx, "get", fs[i].key, err)
			return nil, err
		}
		raw[j] = b
	}
	return raw, nil
}

// encodeLoaded makes the entries and envelopes of the loaded keys; a key
// whose value is not to be cached gives its lease back.
func (c *Cache[V]) encodeLoaded(ctx context.Context, fs []*filling[V], vals map[string]V, o callOptions, started, delta int64, l2err error) {
	var unlease []*filling[V]
	for _, f := range fs {
		f.e = &entry[V]{Value: item[V]{negative: true, filled: started}}
		if v, ok := vals[f.key]; ok {
			f.e = &entry[V]{Value: item[V]{v: v, delta: delta, filled: started}}
		}
		f.res, f.done = flightResult[V]{e: f.e, tier: tierLoader, err: c.strict(l2err)}, true
		f.ttl = c.cacheTTL(f.e, o)
		if f.ttl < 0 {
			f.drop = true // negative caching is off
		} else if b, ttl, err := c.encode(f.key, f.e, c.jitter(f.ttl), o); err != nil {
			c.cfg.Logger.WarnContext(ctx, "tiercache: loaded value not cached", "namespace", c.cfg.Namespace, "key", f.key, "err", err)
			f.drop = true
		} else {
			f.b, f.ttl = b, ttl
		}
		if f.drop {
			unlease = append(unlease, f)
		}
	}
	c.releaseLeases(ctx, unlease)
}

// writeLoaded writes the loaded values to L2 through their leases, before
// L1 has them, so that others find in L2 what this process serves. A value
// whose lease was lost goes to its callers only; one without is not written.
func (c *Cache[V]) writeLoaded(ctx context.Context, fs []*filling[V], o callOptions) error {
	var leased, filled []*filling[V]
	var l2err error
	for _, f := range fs {
		switch {
		case f.drop:
		case f.lease != nil:
			leased = append(leased, f)
		case f.rtok != nil && f.old != nil:
			var replaced bool
			err := c.l2.Call(ctx, func(ctx context.Context) (err error) {
				replaced, err = c.l2.Replace(ctx, c.l2Key(f.key), f.old, f.b, f.ttl)
				return err
			})
			switch {
			case err != nil:
				c.l2Failed(ctx, "refresh-write", f.key, err)
				l2err = err
			case !replaced:
				c.loseLease(f) // written or deleted since we read it
			default:
				filled = append(filled, f)
			}
		case f.plain:
			if err := c.writeL2(ctx, f.key, f.b, f.ttl); err != nil {
				l2err = err
			}
		}
	}
	if len(leased) > 0 {
		l2keys, leases, vals, ttls := make([]string, len(leased)), make([][]byte, len(leased)), make([][]byte, len(leased)), make([]time.Duration, len(leased))
		for i, f := range leased {
			l2keys[i], leases[i], vals[i], ttls[i] = c.l2Key(f.key), f.lease, f.b, f.ttl
		}
		lost, err := c.l2.FillMany(ctx, l2keys, leases, vals, ttls)
		if err != nil {
			_ = c.l2.ReleaseMany(context.WithoutCancel(ctx), l2keys, leases)
			c.l2Failed(ctx, "fill", leased[0].key, err)
			return errors.Join(l2err, err)
		}
		for i, f := range leased {
			if lost[i] {
				c.loseLease(f)
			} else {
				filled = append(filled, f)
			}
		}
	}
	if len(o.tags) > 0 && len(filled) > 0 {
		ttl := slices.MaxFunc(filled, func(a, b *filling[V]) int { return int(a.ttl - b.ttl) }).ttl
		if err := c.tagWritten(ctx, keyList(filled), o.tags, ttl); err != nil {
			l2err = errors.Join(l2err, err)
		}
	}
	return l2err
}

func (c *Cache[V]) tagKeys(ctx context.Context, keys, tags []string, ttl time.Duration) error {
	err := c.l2.Call(ctx, func(ctx context.Context) error { return c.l2.AddTags(ctx, c.cfg.Namespace, keys, tags, ttl) })
	if err != nil {
		c.l2Failed(ctx, "tag", keys[0], err)
	}
	return err
}

// tagWritten adds written keys to their tags, or else removes them from L2:
// a value that its tags do not list would escape InvalidateTags.
func (c *Cache[V]) tagWritten(ctx context.Context, keys, tags []string, ttl time.Duration) error {
	err := c.tagKeys(ctx, keys, tags, ttl)
	if err == nil {
		return nil
	}
	wctx, cancel := c.writeContext(ctx)
	defer cancel()
	del := func(ctx context.Context) error {
		return c.l2.Must(ctx, func(ctx context.Context) error { return c.l2.DelMany(ctx, c.l2Keys(keys)) })
	}
	if derr := c.change(wctx, del, keys, nil, nil, nil); derr != nil {
		c.l2Failed(ctx, "delete", keys[0], derr)
	}
	return fmt.Errorf("tiered: tag %q: %w", keys[0], err)
}

// runLoad calls load once for keys (see guardLoad).
func (c *Cache[V]) runLoad(ctx context.Context, keys []string, load loader[V]) (vals map[string]V, err error) {
	err = c.guardLoad(ctx, func(ctx context.Context) (err error) {
		vals, err = load(ctx, keys)
		return err
	})
	switch {
	case err == nil:
		return vals, nil
	case len(keys) == 1:
		return nil, fmt.Errorf("tiered: load %q: %w", keys[0], err)
	}
	return nil, fmt.Errorf("tiered: load %d keys: %w", len(keys), err)
}

func pending[V any](fs []filling[V]) []*filling[V] {
	var out []*filling[V]
	for i := range fs {
		if !fs[i].done {
			out = append(out, &fs[i])
		}
	}
	return out
}

func keyList[V any](fs []*filling[V]) []string {
	keys := make([]string, len(fs))
	for i, f := range fs {
		keys[i] = f.key
	}
	return keys
}

// results returns each key's result; rest is that of a key not done.
func results[V any](fs []filling[V], rest flightResult[V]) []flightResult[V] {
	out := make([]flightResult[V], len(fs))
	for i := range fs {
		if fs[i].done {
			out[i] = fs[i].res
		} else {
			out[i] = rest
		}
	}
	return out
}
