package tiered

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tiercache/tiercache/internal/l2"
)

// hold puts what a write could not make into the outbox, starting its
// replay, and returns err wrapped in ErrL2Unavailable.
func (c *Cache[V]) hold(err error, keys, tags []string, puts map[string]l2.HeldWrite) error {
	start, ok := c.outbox.Add(keys, tags, puts)
	if start && !c.spawn(func() { c.outbox.Loop(c.closing, outboxTarget[V]{c}) }) {
		c.outbox.Stopped()
	}
	if !ok {
		c.cfg.Logger.Error("tiercache: outbox full: an invalidation that Redis did not get is dropped; other processes may serve the old value until it expires",
			"namespace", c.cfg.Namespace, "held", c.outbox.Held().Load(), "keys", keys, "tags", tags)
		return fmt.Errorf("%w (and the outbox is full, so it will not be retried): %w", ErrL2Unavailable, err)
	}
	if errors.Is(err, ErrL2Unavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrL2Unavailable, err)
}

// errRedisDown fails writes while the outbox holds what its last replay failed.
var errRedisDown = errors.New("known down: the last replay of the outbox failed")

// change makes a write's L2 change with op, retried until ctx ends, or else
// calls keep and holds keys, tags and puts. keep installs the writer's L1
// copy first, since the replay, which may run at once, must end it.
func (c *Cache[V]) change(ctx context.Context, op func(ctx context.Context) error, keys, tags []string, puts map[string]l2.HeldWrite, keep func()) error {
	var err error
	if c.outbox.Held().Load() > 0 && c.outbox.Down() {
		err = errRedisDown
	} else {
		err = c.retry(ctx, op)
	}
	if err != nil {
		c.counters.failedWrites.Add(1)
		if keep != nil {
			keep()
		}
		return c.hold(err, keys, tags, puts)
	}
	if c.outbox.Held().Load() > 0 {
		c.outbox.Wake() // Redis answers: replay now
	}
	return nil
}

// retry runs op until it succeeds or ctx ends; once if WriteTimeout < 0.
func (c *Cache[V]) retry(ctx context.Context, op func(ctx context.Context) error) error {
	if c.cfg.WriteTimeout < 0 {
		return op(ctx)
	}
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		err := op(ctx)
		if err == nil || !sleep(ctx, wait) {
			return err
		}
		c.counters.writeRetries.Add(1)
	}
}

// writeContext is the context of a write's L2 steps: bounded by
// WriteTimeout, not by ctx, since a write must finish or be held.
func (c *Cache[V]) writeContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.cfg.WriteTimeout < 0 {
		return context.WithCancel(context.WithoutCancel(ctx)) // one attempt, which L2Timeout bounds
	}
	return context.WithTimeout(context.WithoutCancel(ctx), c.cfg.WriteTimeout)
}

// closeOutbox is Close's last replay; what it leaves is lost, and reported.
func (c *Cache[V]) closeOutbox() error {
	if c.outbox.Held().Load() == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(c.cfg.WriteTimeout, c.cfg.L2Timeout))
	defer cancel()
	if empty, _ := c.outbox.Replay(ctx, outboxTarget[V]{c}); empty {
		return nil
	}
	n := c.outbox.Held().Load()
	c.cfg.Logger.Error("tiercache: closed with invalidations Redis never got; other processes may serve the old values until they expire",
		"namespace", c.cfg.Namespace, "held", n)
	return fmt.Errorf("%w: closed with %d invalidations not made", ErrL2Unavailable, n)
}

// outboxTarget replays the outbox into c.
type outboxTarget[V any] struct{ c *Cache[V] }

func (t outboxTarget[V]) Delete(ctx context.Context, keys []string) error {
	return t.c.l2.Must(ctx, func(ctx context.Context) error { return t.c.l2.DelMany(ctx, t.c.l2Keys(keys)) })
}

func (t outboxTarget[V]) Put(ctx context.Context, puts map[string]l2.HeldWrite) error {
	return t.c.l2.Must(ctx, func(ctx context.Context) error { return t.c.l2.PutWrites(ctx, t.c.cfg.Namespace, puts) })
}

func (t outboxTarget[V]) PurgeTag(ctx context.Context, tag string) ([]string, error) {
	return t.c.purgeTag(ctx, tag)
}

func (t outboxTarget[V]) Evict(keys, tags []string) {
	t.c.invalidateLocal(keys...)
	t.c.invalidateLocalTags(tags)
}

func (t outboxTarget[V]) Announce(ctx context.Context, keys, tags []string) error {
	ctx, cancel := context.WithTimeout(ctx, max(t.c.cfg.WriteTimeout, t.c.cfg.L2Timeout))
	defer cancel()
	return t.c.announce(ctx, true, keys, tags)
}

func (t outboxTarget[V]) Replayed() {
	t.c.cfg.Logger.Info("tiercache: outbox replayed; L2 is trusted again", "namespace", t.c.cfg.Namespace)
}
