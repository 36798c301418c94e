package tiered

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
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
//
// Unlike Set and Delete, InvalidateTags returns L2 failures even when not
// Strict: without L2 it cannot know which keys to remove. It then clears
// this process's L1, so that this process at least serves nothing stale.
// On an L1-only cache it clears L1.
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
		c.flush("tags")
		return nil
	}
	if c.l2.rdb == nil {
		return errors.New("tiered: InvalidateTags needs Config.Redis")
	}
	var removed int
	for _, t := range tags {
		n, err := c.invalidateTag(ctx, t)
		removed += n
		if err != nil {
			c.l2Failed(ctx, "invalidate-tags", t, err)
			c.flush("tags")
			return fmt.Errorf("tiered: invalidate tag %q: %w", t, err)
		}
	}
	span.SetAttributes(attribute.Int("tiercache.keys", removed))
	return nil
}

// invalidateTag empties one tag set, a batch at a time.
func (c *Cache[V]) invalidateTag(ctx context.Context, tag string) (int, error) {
	tk := tagKey(c.cfg.Namespace, tag)
	var n int64
	if err := c.l2.call(ctx, func(ctx context.Context) (err error) {
		n, err = c.l2.rdb.SCard(ctx, tk).Result()
		return err
	}); err != nil {
		return 0, err
	}
	// Members added while we pop are newer than this call; stop once the
	// members present at the start could all have been taken.
	var removed int
	for i := int64(0); i <= n/tagBatch; i++ {
		var keys []string
		if err := c.l2.call(ctx, func(ctx context.Context) (err error) {
			keys, err = c.l2.rdb.SPopN(ctx, tk, tagBatch).Result()
			return err
		}); err != nil {
			return removed, err
		}
		if len(keys) == 0 {
			break
		}
		if err := c.deleteTagged(ctx, tk, keys); err != nil {
			return removed, err
		}
		removed += len(keys)
		if len(keys) < tagBatch {
			break
		}
	}
	return removed, nil
}

// deleteTagged deletes keys popped from the tag set tk from both tiers and
// tells the other processes. If L2 refuses, the keys go back into the set,
// so that a retry finds them.
func (c *Cache[V]) deleteTagged(ctx context.Context, tk string, keys []string) error {
	err := c.l2.call(ctx, func(ctx context.Context) error {
		_, err := c.l2.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range keys {
				p.Del(ctx, c.l2Key(k)) // one key per DEL: cluster-safe
			}
			return nil
		})
		return err
	})
	// Some keys may be gone even if the pipeline failed: evict them all,
	// here and everywhere (an extra eviction is harmless).
	c.invalidateLocal(keys...)
	perr := c.publish(ctx, keys...)
	if err != nil {
		members := make([]any, len(keys))
		for i, k := range keys {
			members[i] = k
		}
		_ = c.l2.rdb.SAdd(context.WithoutCancel(ctx), tk, members...).Err()
		return err
	}
	return c.strict(perr)
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
	if c.l2 == nil || c.l2.rdb == nil {
		return nil, fmt.Errorf("tiered: TaggedKeys needs Config.Redis: %w", errors.ErrUnsupported)
	}
	var keys []string
	err := c.l2.call(ctx, func(ctx context.Context) (err error) {
		keys, err = c.l2.rdb.SMembers(ctx, tagKey(c.cfg.Namespace, tag)).Result()
		return err
	})
	if err != nil {
		c.l2Failed(ctx, "tagged-keys", tag, err)
		return nil, fmt.Errorf("tiered: keys of tag %q: %w", tag, err)
	}
	return keys, nil
}
