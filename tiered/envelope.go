package tiered

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/tiercache/tiercache/internal/l1"
	"github.com/tiercache/tiercache/internal/l2"
)

// cacheTTL is how long e, just loaded, stays fresh; negative: not cached.
func (c *Cache[V]) cacheTTL(e *entry[V], o callOptions) time.Duration {
	if e.Value.negative {
		return c.cfg.NegativeTTL
	}
	return o.ttl
}

type l2State int

const (
	l2Value l2State = iota // a live value (or a live negative entry)
	l2Lease                // another process's lease: it is loading
	l2Junk                 // corrupt, foreign or expired: a miss that a load may replace
)

func (c *Cache[V]) decodeL2(ctx context.Context, key string, b []byte) (*entry[V], time.Duration, l2State) {
	env, err := l2.DecodeEnvelope(b, c.cfg.Codec.ID(), c.cfg.MaxValueBytes)
	if err != nil {
		c.decodeFailed(ctx, key, err)
		return nil, 0, l2Junk
	}
	now := time.Unix(0, c.clock.Now())
	ttl, live := env.Remaining(now)
	switch {
	case !live:
		return nil, 0, l2Junk
	case env.Lease && (env.Expiry == 0 || ttl > c.cfg.LeaseTTL+l2.LeaseSkew):
		// No lease of ours lasts so long (or a clock is off): garbage, replaced.
		c.decodeFailed(ctx, key, l2.ErrBadLease)
		return nil, 0, l2Junk
	case env.Lease:
		return nil, 0, l2Lease
	}
	e := &entry[V]{Value: item[V]{negative: env.Negative}, Cost: l1.EntryCost(key, len(b))}
	if env.Fresh != 0 && !env.Negative {
		e.Value.fresh, e.Value.hard, e.Value.delta = env.Fresh*1e6, env.Expiry*1e6, env.Delta*1e3
		if env.Expiry == 0 {
			e.Value.hard = math.MaxInt64
		}
		c.schedule(e)
	}
	if !env.Negative {
		if err := c.cfg.Codec.Unmarshal(env.Payload, &e.Value.v); err != nil {
			c.decodeFailed(ctx, key, err)
			return nil, 0, l2Junk
		}
	}
	return e, ttl, l2Value
}

// writeL2 stores the envelope b for ttl, if there is an L2.
func (c *Cache[V]) writeL2(ctx context.Context, key string, b []byte, ttl time.Duration) error {
	if c.l2 == nil {
		return nil
	}
	if err := c.l2.Set(ctx, c.l2Key(key), b, ttl); err != nil {
		c.l2Failed(ctx, "set", key, err)
		return fmt.Errorf("tiered: L2 set %q: %w", key, err)
	}
	return nil
}

// encode returns the envelope for e, fresh for ttl, and how long L2 keeps it
// (with o's stale windows); it sets e's freshness and cost (its L1 size).
func (c *Cache[V]) encode(key string, e *entry[V], ttl time.Duration, o callOptions) ([]byte, time.Duration, error) {
	var payload []byte
	if !e.Value.negative {
		var err error
		if payload, err = c.marshal(key, e.Value.v); err != nil {
			return nil, 0, err
		}
	}
	now := time.Unix(0, c.clock.Now())
	if e.Value.negative {
		e.Cost = l1.EntryCost(key, l2.HeaderSize)
		return l2.AppendEnvelope(make([]byte, 0, l2.HeaderSize), 0, l2.FlagNegative, now.Add(ttl), nil), ttl, nil
	}
	keep := ttl + max(o.staleTTL, o.maxStale)
	fresh, hard := now.Add(ttl), now.Add(keep)
	e.Value.fresh, e.Value.hard = fresh.UnixNano(), hard.UnixNano()
	c.schedule(e)
	e.Cost = l1.EntryCost(key, l2.HeaderSize+l2.FreshExt+len(payload))
	b := make([]byte, 0, l2.HeaderSize+l2.FreshExt+len(payload))
	return l2.AppendFreshEnvelope(b, c.cfg.Codec.ID(), 0, fresh, hard, time.Duration(e.Value.delta), payload), keep, nil
}

// marshal encodes v for L2, refusing a payload over MaxValueBytes.
func (c *Cache[V]) marshal(key string, v V) ([]byte, error) {
	payload, err := c.cfg.Codec.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("tiered: encode %q: %w", key, err)
	}
	if len(payload) > c.cfg.MaxValueBytes {
		return nil, fmt.Errorf("%w: %q encodes to %d bytes, limit %d", ErrValueTooLarge, key, len(payload), c.cfg.MaxValueBytes)
	}
	return payload, nil
}
