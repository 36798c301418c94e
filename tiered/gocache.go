package tiered

import (
	"context"
	"fmt"

	"github.com/eko/gocache/lib/v4/store"
)

// Gocache returns c as a gocache cache.CacheInterface[V], for code written
// against gocache. Keys must be strings or implement
// cache.CacheKeyGenerator; per-call store options are ignored (the Config
// decides TTLs). Invalidate and Clear are not supported: gocache's
// Redis store would implement Clear with FLUSHALL, which is not a cache's
// call to make on a shared Redis.
//
// The adapter satisfies the interface by its method set; this package does
// not import gocache's cache package, which would bring the Prometheus
// client into every build.
func (c *Cache[V]) Gocache() GocacheAdapter[V] { return GocacheAdapter[V]{c} }

// GocacheAdapter is a Cache seen through gocache's cache.CacheInterface[V].
type GocacheAdapter[V any] struct{ c *Cache[V] }

// Get is Cache.Get.
func (a GocacheAdapter[V]) Get(ctx context.Context, key any) (V, error) {
	k, err := gocacheKey(key)
	if err != nil {
		var zero V
		return zero, err
	}
	return a.c.Get(ctx, k)
}

// Set is Cache.Set; the options are ignored.
func (a GocacheAdapter[V]) Set(ctx context.Context, key any, v V, _ ...store.Option) error {
	k, err := gocacheKey(key)
	if err != nil {
		return err
	}
	return a.c.Set(ctx, k, v)
}

// Delete is Cache.Delete of one key.
func (a GocacheAdapter[V]) Delete(ctx context.Context, key any) error {
	k, err := gocacheKey(key)
	if err != nil {
		return err
	}
	return a.c.Delete(ctx, k)
}

// Invalidate returns store.ErrNotSupported: gocache's invalidation options
// are its own tags, not this cache's; use Cache.InvalidateTags.
func (a GocacheAdapter[V]) Invalidate(context.Context, ...store.InvalidateOption) error {
	return fmt.Errorf("tiered: Invalidate: %w", store.ErrNotSupported)
}

// Clear returns store.ErrNotSupported: see Cache.Gocache.
func (a GocacheAdapter[V]) Clear(context.Context) error {
	return fmt.Errorf("tiered: Clear: %w", store.ErrNotSupported)
}

// GetType returns "tiered".
func (a GocacheAdapter[V]) GetType() string { return "tiered" }

func gocacheKey(key any) (string, error) {
	switch k := key.(type) {
	case string:
		return k, nil
	case interface{ GetCacheKey() string }: // gocache's cache.CacheKeyGenerator
		return k.GetCacheKey(), nil
	}
	return "", fmt.Errorf("%w: gocache key of type %T, want string or cache.CacheKeyGenerator", ErrInvalidKey, key)
}
