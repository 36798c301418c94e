package tiered

import (
	"fmt"
	"time"
)

// Option changes one call from the Config defaults. Options apply to the
// value written (Set, WriteThrough, WriteBehind.Set) or loaded (GetOrLoad,
// GetOrLoadMany; when callers share a load, those of its starter win).
type Option func(*callOptions)

type callOptions struct {
	ttl                time.Duration
	staleTTL, maxStale time.Duration
	tags               []string
}

// WithTTL makes the value fresh for d instead of Config.TTL; its L1 copy
// still lives at most Config.L1TTL. The call fails unless d is positive.
func WithTTL(d time.Duration) Option {
	return func(o *callOptions) { o.ttl = d }
}

// WithStale overrides Config.StaleTTL and Config.MaxStale for one call.
// The call fails if either is negative.
func WithStale(staleTTL, maxStale time.Duration) Option {
	return func(o *callOptions) { o.staleTTL, o.maxStale = staleTTL, maxStale }
}

// WithTags attaches tags to the value, so that InvalidateTags with any of
// them removes it from every tier and process. With a Store but no
// Config.Redis the call fails; on an L1-only cache tags act on L1 alone.
func WithTags(tags ...string) Option {
	return func(o *callOptions) { o.tags = append(o.tags, tags...) }
}

func (c *Cache[V]) options(opts []Option) (callOptions, error) {
	o := callOptions{ttl: c.cfg.TTL, staleTTL: c.cfg.StaleTTL, maxStale: c.cfg.MaxStale}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.ttl <= 0 {
		return o, fmt.Errorf("tiered: WithTTL(%v): must be positive", o.ttl)
	}
	if o.staleTTL < 0 || o.maxStale < 0 {
		return o, fmt.Errorf("tiered: WithStale(%v, %v): must not be negative", o.staleTTL, o.maxStale)
	}
	for _, t := range o.tags {
		if err := c.checkKey(t); err != nil {
			return o, fmt.Errorf("tiered: tag: %w", err)
		}
	}
	if len(o.tags) > 0 && c.l2 != nil && c.l2.Redis() == nil {
		return o, fmt.Errorf("tiered: tags need Config.Redis; a gocache Store alone cannot index them")
	}
	return o, nil
}
