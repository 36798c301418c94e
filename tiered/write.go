package tiered

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// WriteFunc persists v under key in the source of truth.
type WriteFunc[V any] func(ctx context.Context, key string, v V) error

// WriteThrough writes v to the source with write and then to the cache as
// Set does, so that readers in any replica find it without a load. If write
// fails or panics, WriteThrough returns the error and changes nothing.
func (c *Cache[V]) WriteThrough(ctx context.Context, key string, v V, write WriteFunc[V], opts ...Option) error {
	if err := c.writeSource(ctx, key, v, write); err != nil {
		return err
	}
	return c.Set(ctx, key, v, opts...)
}

// WriteAround writes v to the source with write and then removes key from
// the cache in every process, as Delete does: the next read loads it. Use it
// for values written more often than read. If write fails, nothing changes.
func (c *Cache[V]) WriteAround(ctx context.Context, key string, v V, write WriteFunc[V]) error {
	if err := c.writeSource(ctx, key, v, write); err != nil {
		return err
	}
	return c.Delete(ctx, key)
}

// writeSource checks the call and runs write, a panic turned into an error.
func (c *Cache[V]) writeSource(ctx context.Context, key string, v V, write WriteFunc[V]) (err error) {
	if write == nil {
		return errors.New("tiered: write with a nil WriteFunc")
	}
	if err := c.checkKey(key); err != nil {
		return err
	}
	if c.isClosed() {
		return ErrClosed
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("tiered: writer for %q panicked: %v", key, r)
		}
	}()
	if err := write(ctx, key, v); err != nil {
		return fmt.Errorf("tiered: write %q to the source: %w", key, err)
	}
	return nil
}

// Set stores v under key in L2 and then in L1, for Config.TTL (or WithTTL),
// and invalidates the key in every other process's L1 before it returns; a
// load of key in flight anywhere loses its lease and does not overwrite v.
// It finishes its L2 write and invalidation even if ctx is done, retrying
// for up to Config.WriteTimeout. If it cannot, it still stores v in this
// process's L1, keeps the invalidation in its outbox for when Redis answers,
// and returns an error for which errors.Is(err, ErrL2Unavailable) holds:
// other processes may serve the old value until then (docs/consistency.md).
func (c *Cache[V]) Set(ctx context.Context, key string, v V, opts ...Option) (err error) {
	if err := c.checkKey(key); err != nil {
		return err
	}
	o, err := c.options(opts)
	if err != nil {
		return err
	}
	if c.isClosed() {
		return ErrClosed
	}
	ctx, span := c.tracer.Start(ctx, "tiered.Set", trace.WithAttributes(attribute.String("tiercache.namespace", c.cfg.Namespace)))
	defer endSpan(span, &err)
	wctx, cancel := c.writeContext(ctx)
	defer cancel()

	t := c.fence.Ticket(key, o.tags) // for its tags: an InvalidateTags during Set ends the L1 copy
	e := &entry[V]{Value: item[V]{v: v, filled: c.clock.Exact()}}
	b, ttl, err := c.encode(key, e, c.jitter(o.ttl), o)
	if err != nil {
		return err // bad input: nothing was written anywhere
	}
	// The fence moves after the L2 write: a fill that read L2 before it
	// holds an older ticket. On a failure, change installs v first.
	install := func() {
		c.fence.Invalidate(key)
		if len(t.Tags) > 0 {
			e.Value.tags = &t.Tags
		}
		c.l1.Set(key, e, c.l1TTL(ttl))
	}
	var l2err error
	if c.l2 != nil {
		l2key := c.l2Key(key)
		l2err = c.change(wctx, func(ctx context.Context) error {
			if err := c.l2.Must(ctx, func(ctx context.Context) error { return c.l2.Put(ctx, l2key, b, ttl) }); err != nil {
				return err
			}
			if len(o.tags) > 0 && c.l2.Redis() != nil {
				// After the value: see InvalidateTags.
				return c.l2.Must(ctx, func(ctx context.Context) error { return c.l2.AddTags(ctx, c.cfg.Namespace, []string{key}, o.tags, ttl) })
			}
			return nil
		}, []string{key}, nil, nil, install)
		if l2err != nil {
			c.l2Failed(ctx, "set", key, l2err)
			l2err = fmt.Errorf("tiered: set %q: %w", key, l2err)
		}
	}
	if l2err == nil {
		install()
	}
	return errors.Join(l2err, c.announce(wctx, l2err == nil, []string{key}, nil))
}

// Delete removes keys from L2 and then from L1, and invalidates them in
// every other process's L1 before it returns; all keys are checked first.
// L2 failures are handled as in Set, and the keys leave this L1 anyway.
func (c *Cache[V]) Delete(ctx context.Context, keys ...string) (err error) {
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return err
		}
	}
	if c.isClosed() {
		return ErrClosed
	}
	ctx, span := c.tracer.Start(ctx, "tiered.Delete", trace.WithAttributes(
		attribute.String("tiercache.namespace", c.cfg.Namespace), attribute.Int("tiercache.keys", len(keys))))
	defer endSpan(span, &err)
	wctx, cancel := c.writeContext(ctx)
	defer cancel()

	var l2err error
	if c.l2 != nil && len(keys) > 0 {
		// The DEL also removes a lease: a load in flight cannot write back.
		l2keys := c.l2Keys(keys)
		l2err = c.change(wctx, func(ctx context.Context) error {
			return c.l2.Must(ctx, func(ctx context.Context) error { return c.l2.DelMany(ctx, l2keys) })
		}, keys, nil, nil, nil)
		if l2err != nil {
			c.l2Failed(ctx, "delete", keys[0], l2err)
			l2err = fmt.Errorf("tiered: delete %d keys: %w", len(keys), l2err)
		}
	}
	// Last, so that a fill that read L2 before the DEL cannot install.
	c.invalidateLocal(keys...)
	return errors.Join(l2err, c.announce(wctx, l2err == nil, keys, nil))
}

// invalidateLocal removes keys from L1 and fences their fills in flight.
func (c *Cache[V]) invalidateLocal(keys ...string) {
	for _, k := range keys {
		c.fence.Invalidate(k)
		c.l1.Delete(k)
	}
}

// invalidateLocalKeys is invalidateLocal for the bus.
func (c *Cache[V]) invalidateLocalKeys(keys []string) { c.invalidateLocal(keys...) }

// invalidateLocalTags ends the L1 copies and fills that carry any of tags.
func (c *Cache[V]) invalidateLocalTags(tags []string) {
	for _, t := range tags {
		c.fence.InvalidateTag(t)
	}
}

// flush empties L1 and fences every fill, for the bus, which logs why.
func (c *Cache[V]) flush(string) {
	c.fence.InvalidateAll()
	c.l1.Clear()
	c.counters.flushes.Add(1)
}

// announce publishes keys and tags to the other processes, retried within
// ctx when again is set (Redis just answered the write). On an error, which
// wraps ErrL2Unavailable, the others flush at this process's next heartbeat.
func (c *Cache[V]) announce(ctx context.Context, again bool, keys, tags []string) error {
	if c.bus == nil || len(keys)+len(tags) == 0 {
		return nil
	}
	send := func(ctx context.Context) error {
		if err := c.bus.Publish(ctx, keys...); err != nil {
			return err
		}
		return c.bus.PublishTags(ctx, tags...)
	}
	var err error
	if again {
		err = c.retry(ctx, send)
	} else {
		err = send(ctx)
	}
	if err != nil {
		return fmt.Errorf("tiered: invalidation: %w: %w", ErrL2Unavailable, err)
	}
	return nil
}
