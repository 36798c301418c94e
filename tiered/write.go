package tiered

import (
	"context"
	"errors"
	"fmt"
)

// WriteFunc persists v under key in the source of truth.
type WriteFunc[V any] func(ctx context.Context, key string, v V) error

// WriteThrough writes v to the source with write and then, once the source
// has it, to the cache as Set does (L2, L1, and an invalidation of every
// other process's copy). If write fails, WriteThrough returns its error and
// changes nothing anywhere: no tier, no process. A panic in write is
// returned as an error too.
//
// Use it when readers must find what was just written, in any replica,
// without a load: the write pays the cache's round trips.
func (c *Cache[V]) WriteThrough(ctx context.Context, key string, v V, write WriteFunc[V], opts ...Option) error {
	if err := c.writeSource(ctx, key, v, write); err != nil {
		return err
	}
	return c.Set(ctx, key, v, opts...)
}

// WriteAround writes v to the source with write and then removes key from
// the cache, in every process, as Delete does: the next read loads the new
// value. If write fails, nothing changes.
//
// Use it for values written more often than read, or read by few: the
// cache keeps only what is read.
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
