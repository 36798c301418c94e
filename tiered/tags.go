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
// every other process's L1. Loads of those keys already in flight lose
// their leases and do not write their values.
//
// A tag set is read with SPOP, which takes members atomically, and every
// tagged write adds its key to its tags after writing its value: a write
// racing with InvalidateTags is either removed by it or keeps its tag.
// Every process also ends the L1 copies it knows to carry the tags (those
// it filled or set with them), so that a copy whose tag never reached
// Redis's tag set goes too.
//
// L2 failures are handled as in Set: what Redis did not get is kept in the
// outbox, and the error wraps ErrL2Unavailable. On an L1-only cache it
// ends the L1 copies that carry the tags.
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
	// older tag generation and will not install.
	c.invalidateLocalTags(tags)
	span.SetAttributes(attribute.Int("tiercache.keys", len(removed)))
	return errors.Join(errors.Join(errs...), c.announce(wctx, len(errs) == 0, removed, tags))
}

// purgeTag empties the tag set of tag, a batch at a time: it deletes the
// members from L2 and from this process's L1, and returns them for the
// caller to publish. A batch that L2 refuses to delete goes back into the
// set, so that a retry finds it, or, failing that, into the outbox. A tag
// key of another Redis type is garbage, and is deleted.
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
	// Members added while we pop are newer than this call; stop once the
	// members present at the start could all have been taken.
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
		// Some keys may be gone even if the pipeline failed: evict them
		// all here (an extra eviction is harmless).
		c.invalidateLocal(keys...)
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
// that act on each (a soft purge, say). The list is read from L2's tag set,
// so it needs Config.Redis, and it may include keys whose values have
// expired since.
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
