// Package gocacheadapter shows a tiered.Cache to code written against
// eko/gocache, as a cache.CacheInterface[V]:
//
//	gc := gocacheadapter.New(products)
//	err := gc.Set(ctx, "product:1", p)
//
// Keys must be strings or implement cache.CacheKeyGenerator; per-call store
// options are ignored (the Config decides TTLs). Invalidate and Clear are
// not supported: gocache's Redis store would implement Clear with FLUSHALL,
// which is not a cache's call to make on a shared Redis.
//
// The adapter satisfies the interface by its method set; this package does
// not import gocache's cache package, which would bring the Prometheus
// client into every build.
package gocacheadapter

import (
	"context"
	"fmt"

	"github.com/eko/gocache/lib/v4/store"

	"github.com/tiercache/tiercache/tiered"
)

// New returns c as a gocache cache.CacheInterface[V].
func New[V any](c *tiered.Cache[V]) Adapter[V] { return Adapter[V]{c} }

// Adapter is a tiered.Cache seen through gocache's cache.CacheInterface[V].
type Adapter[V any] struct{ c *tiered.Cache[V] }

// Get is tiered.Cache.Get.
func (a Adapter[V]) Get(ctx context.Context, key any) (V, error) {
	k, err := gocacheKey(key)
	if err != nil {
		var zero V
		return zero, err
	}
	return a.c.Get(ctx, k)
}

// Set is tiered.Cache.Set; the options are ignored.
func (a Adapter[V]) Set(ctx context.Context, key any, v V, _ ...store.Option) error {
	k, err := gocacheKey(key)
	if err != nil {
		return err
	}
	return a.c.Set(ctx, k, v)
}

// Delete is tiered.Cache.Delete of one key.
func (a Adapter[V]) Delete(ctx context.Context, key any) error {
	k, err := gocacheKey(key)
	if err != nil {
		return err
	}
	return a.c.Delete(ctx, k)
}

// Invalidate returns store.ErrNotSupported: gocache's invalidation options
// are its own tags, not this cache's; use tiered.Cache.InvalidateTags.
func (a Adapter[V]) Invalidate(context.Context, ...store.InvalidateOption) error {
	return fmt.Errorf("gocacheadapter: Invalidate: %w", store.ErrNotSupported)
}

// Clear returns store.ErrNotSupported: see the package doc.
func (a Adapter[V]) Clear(context.Context) error {
	return fmt.Errorf("gocacheadapter: Clear: %w", store.ErrNotSupported)
}

// GetType returns "tiered".
func (a Adapter[V]) GetType() string { return "tiered" }

func gocacheKey(key any) (string, error) {
	switch k := key.(type) {
	case string:
		return k, nil
	case interface{ GetCacheKey() string }: // gocache's cache.CacheKeyGenerator
		return k.GetCacheKey(), nil
	}
	return "", fmt.Errorf("%w: gocache key of type %T, want string or cache.CacheKeyGenerator", tiered.ErrInvalidKey, key)
}
