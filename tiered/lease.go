package tiered

import (
	"bytes"
	"context"
	"time"

	"github.com/tiercache/tiercache/internal/l2"
)

// Leases, the fill protocol's third step (fill.go): one load of a key for
// the whole cluster, and no fill over a newer write.

// leaseAll takes the leases of the keys left to load: the L2 lease of a key
// L2 lacks (tagged first, so that an InvalidateTags during the load deletes
// the lease), the refresh lease of a value L2 holds. A Store has no leases.
func (c *Cache[V]) leaseAll(ctx context.Context, fs []filling[V], load loader[V], o callOptions, started int64) error {
	left := pending(fs)
	if c.l2.Redis() == nil {
		for _, f := range left {
			f.plain = true
		}
		return nil
	}
	var fresh []*filling[V]
	for _, f := range left {
		if f.old == nil {
			fresh = append(fresh, f)
		}
	}
	if len(fresh) > 0 {
		if len(o.tags) > 0 {
			if err := c.tagKeys(ctx, keyList(fresh), o.tags, o.ttl+c.cfg.LeaseTTL); err != nil {
				return err
			}
		}
		if err := c.leaseKeys(ctx, fresh, load, o, started); err != nil {
			return err
		}
	}
	for i := range fs {
		f := &fs[i]
		if !f.done && f.old != nil && f.lease == nil {
			c.leaseRefresh(ctx, f, started)
		}
	}
	return nil
}

// leaseKeys leases keys in one round trip, which returns what a key holds
// where it cannot. Values found are served; a key leased elsewhere is polled
// until filled or leasable; junk is replaced once. A key left unleased is
// loaded without writing L2.
func (c *Cache[V]) leaseKeys(ctx context.Context, fs []*filling[V], load loader[V], o callOptions, started int64) error {
	wait := c.leaseWait()
	waited := false
	for round := 0; len(fs) > 0; round++ {
		l2keys := make([]string, len(fs))
		junks := make([][]byte, len(fs))
		for i, f := range fs {
			l2keys[i], junks[i] = c.l2Key(f.key), f.junk
		}
		ls, held, cur, err := c.l2.LeaseMany(ctx, l2keys, junks, c.cfg.LeaseTTL)
		if err != nil {
			// A Cluster pipeline can fail on one node only: give back any taken.
			_ = c.l2.ReleaseMany(context.WithoutCancel(ctx), l2keys, ls)
			c.l2Failed(ctx, "lease", fs[0].key, err)
			return err
		}
		var again []*filling[V]
		for i, f := range fs {
			if held[i] {
				if !f.read {
					c.counters.l2Misses.Add(1)
				}
				f.read, f.lease = true, ls[i]
				continue
			}
			e, ttl, state := c.decodeL2(ctx, f.key, cur[i])
			if !f.read && state != l2Value {
				c.counters.l2Misses.Add(1)
			}
			f.read = true
			switch {
			case state == l2Value:
				c.counters.l2Hits.Add(1)
				c.found(ctx, f, cur[i], e, ttl, load, o, 0, started, c.clock.Now())
			case state == l2Junk && f.junk == nil:
				f.junk = cur[i]
				again = append(again, f)
			case state == l2Lease:
				if !waited {
					waited = true
					c.counters.leaseWaits.Add(1)
				}
				again = append(again, f)
			}
		}
		fs = again
		if len(fs) > 0 && !wait.next(ctx) {
			return nil
		}
	}
	return nil
}

// leaseRefresh takes f's refresh lease, or else serves the holder's value;
// if none comes, or L2 fails, the key is loaded without writing L2.
func (c *Cache[V]) leaseRefresh(ctx context.Context, f *filling[V], started int64) {
	f.rkey = l2.RefreshKey(c.cfg.Namespace, f.key)
	var held bool
	err := c.l2.Call(ctx, func(ctx context.Context) (err error) {
		f.rtok, held, err = c.l2.TakeRefreshLease(ctx, f.rkey, c.cfg.LeaseTTL)
		return err
	})
	switch {
	case err != nil:
		c.l2Failed(ctx, "refresh-lease", f.key, err)
		f.old, f.rtok = nil, nil
	case !held:
		f.rtok = nil
		if e, ttl, ok := c.awaitRefresh(ctx, f.key, f.rkey, f.old); ok {
			e.Value.filled = started
			c.install(f.key, e, c.l1TTL(ttl), f.t, false)
			f.res, f.done = flightResult[V]{e: e, tier: tierL2}, true
		}
		f.old = nil
	}
}

// awaitRefresh polls L2 until key holds another value than old; ok is false
// if none came within LeaseTTL, or the refresher gave up.
func (c *Cache[V]) awaitRefresh(ctx context.Context, key, rk string, old []byte) (*entry[V], time.Duration, bool) {
	c.counters.leaseWaits.Add(1)
	for wait := c.leaseWait(); wait.next(ctx); {
		var b []byte
		var leased bool
		err := c.l2.Call(ctx, func(ctx context.Context) (err error) {
			b, leased, err = c.l2.PollRefresh(ctx, c.l2Key(key), rk)
			return err
		})
		switch {
		case err != nil:
			return nil, 0, false
		case bytes.Equal(b, old):
			if !leased {
				return nil, 0, false // released: the refresher gave up
			}
			continue
		case b == nil:
			return nil, 0, false
		}
		e, ttl, state := c.decodeL2(ctx, key, b)
		return e, ttl, state == l2Value
	}
	return nil, 0, false
}

// loseLease keeps a value whose lease a write or delete replaced out of
// both tiers, since it may predate that write; its callers still get it.
func (c *Cache[V]) loseLease(f *filling[V]) {
	c.counters.leaseLost.Add(1)
	f.drop = true
	f.res = flightResult[V]{e: f.e, tier: tierLoader}
}

// releaseLeases gives back the L2 leases of keys that will not be filled,
// so that the next process to miss takes one instead of waiting LeaseTTL.
func (c *Cache[V]) releaseLeases(ctx context.Context, fs []*filling[V]) {
	var l2keys []string
	var leases [][]byte
	for _, f := range fs {
		if f.lease != nil {
			l2keys, leases = append(l2keys, c.l2Key(f.key)), append(leases, f.lease)
			f.lease = nil
		}
	}
	if len(l2keys) > 0 {
		if err := c.l2.ReleaseMany(ctx, l2keys, leases); err != nil {
			c.l2Failed(ctx, "release", fs[0].key, err)
		}
	}
}

// releaseRefreshes gives back the refresh leases, once the fill is over.
func (c *Cache[V]) releaseRefreshes(ctx context.Context, fs []filling[V]) {
	for i := range fs {
		if f := &fs[i]; f.rtok != nil {
			if err := c.l2.ReleaseLease(ctx, f.rkey, f.rtok); err != nil {
				c.l2Failed(ctx, "refresh-release", f.key, err)
			}
		}
	}
}

// maxLeasePoll caps a poll's wait: how late a waiter may see the holder's fill.
const maxLeasePoll = 16 * time.Millisecond

// pollWait paces the polls of a key another process is loading, for at most
// LeaseTTL plus an L2 timeout: then the holder is taken for dead.
type pollWait struct {
	deadline time.Time
	backoff  time.Duration
}

func (c *Cache[V]) leaseWait() pollWait {
	return pollWait{deadline: time.Now().Add(c.cfg.LeaseTTL + c.cfg.L2Timeout), backoff: time.Millisecond}
}

// next sleeps until the next poll: false past the deadline or with ctx done.
func (w *pollWait) next(ctx context.Context) bool {
	if time.Now().Add(w.backoff).After(w.deadline) || !sleep(ctx, w.backoff) {
		return false
	}
	w.backoff = min(2*w.backoff, maxLeasePoll)
	return true
}
