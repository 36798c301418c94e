package tiered

import (
	"context"
	"errors"
	"fmt"

	"github.com/tiercache/tiercache/internal/l2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// tagBatch is how many members one SPOP takes from a tag set.
const tagBatch = 512

// InvalidateTags removes every key tagged with any of tags (see WithTags)
// from L2, from this process's L1 and, through the invalidation bus, from
// every other process's L1. Loads of those keys in flight lose their leases
// and do not write their values; a tagged write racing with it is either
// removed or keeps its tag (it tags after writing, and tag sets are popped
// atomically). L2 failures are handled as in Set. On an L1-only cache it
// ends the L1 copies that carry the tags; with a Store but no Config.Redis
// it fails.
func (c *Cache[V]) InvalidateTags(ctx context.Context, tags ...string) (err error) {
	for _, t := range tags {
		if err := c.checkKey(t); err != nil {
			return fmt.Errorf("tiered: tag: %w", err)
		}
	}
	if c.isClosed() {
		return ErrClosed
	}
	ctx, span := c.tracer.Start(ctx, "tiered.InvalidateTags", trace.WithAttributes(
		attribute.String("tiercache.namespace", c.cfg.Namespace), attribute.Int("tiercache.tags", len(tags))))
	defer endSpan(span, &err)

	if c.l2 == nil {
		c.invalidateLocalTags(tags)
		return nil
	}
	if c.l2.Redis() == nil {
		return errors.New("tiered: InvalidateTags needs Config.Redis")
	}
	wctx, cancel := c.writeContext(ctx)
	defer cancel()
	var removed []string
	var errs []error
	for _, t := range tags {
		err := c.change(wctx, func(ctx context.Context) error {
			keys, err := c.purgeTag(ctx, t)
			removed = append(removed, keys...)
			return err
		}, nil, []string{t}, nil, nil)
		if err != nil {
			c.l2Failed(ctx, "invalidate-tags", t, err)
			errs = append(errs, fmt.Errorf("tiered: invalidate tag %q: %w", t, err))
		}
	}
	// After L2, as for keys: a fill that read L2 before the purge holds an
	// older tag generation.
	c.invalidateLocalTags(tags)
	span.SetAttributes(attribute.Int("tiercache.keys", len(removed)))
	return errors.Join(errors.Join(errs...), c.announce(wctx, len(errs) == 0, removed, tags))
}

// purgeTag empties the tag set of tag a batch at a time, deleting the
// members from L2 and L1, and returns them for the caller to publish. A
// batch L2 fails to delete goes back into the set for a retry, or else into
// the outbox.
func (c *Cache[V]) purgeTag(ctx context.Context, tag string) ([]string, error) {
	tk := l2.TagKey(c.cfg.Namespace, tag)
	var n int64
	err := c.l2.Must(ctx, func(ctx context.Context) (err error) {
		n, err = c.l2.TagSize(ctx, tk)
		return err
	})
	if err != nil {
		return nil, err
	}
	// Pop only as many as were there at the start: later ones are newer.
	var removed []string
	for i := int64(0); i <= n/tagBatch; i++ {
		var keys []string
		if err := c.l2.Must(ctx, func(ctx context.Context) (err error) {
			keys, err = c.l2.PopTag(ctx, tk, tagBatch)
			return err
		}); err != nil {
			return removed, err
		}
		if len(keys) == 0 {
			break
		}
		err := c.l2.Must(ctx, func(ctx context.Context) error { return c.l2.DelMany(ctx, c.l2Keys(keys)) })
		c.invalidateLocal(keys...) // even if the DEL failed: some may be gone
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.L2Timeout)
			if aerr := c.l2.RestoreTag(rctx, tk, keys); aerr != nil {
				_ = c.hold(aerr, keys, nil, nil)
			}
			cancel()
			return removed, err
		}
		removed = append(removed, keys...)
		if len(keys) < tagBatch {
			break
		}
	}
	return removed, nil
}

// TaggedKeys returns the keys tagged with tag (see WithTags), for callers
// that act on each (a soft purge, say). It reads L2's tag set, so it needs
// Config.Redis (else the error wraps errors.ErrUnsupported), and the list
// may include keys whose values have expired.
func (c *Cache[V]) TaggedKeys(ctx context.Context, tag string) ([]string, error) {
	if err := c.checkKey(tag); err != nil {
		return nil, fmt.Errorf("tiered: tag: %w", err)
	}
	if c.isClosed() {
		return nil, ErrClosed
	}
	if c.l2 == nil || c.l2.Redis() == nil {
		return nil, fmt.Errorf("tiered: TaggedKeys needs Config.Redis: %w", errors.ErrUnsupported)
	}
	var keys []string
	err := c.l2.Call(ctx, func(ctx context.Context) (err error) {
		keys, err = c.l2.TagMembers(ctx, l2.TagKey(c.cfg.Namespace, tag))
		return err
	})
	if err != nil {
		c.l2Failed(ctx, "tagged-keys", tag, err)
		return nil, fmt.Errorf("tiered: keys of tag %q: %w", tag, err)
	}
	return keys, nil
}
