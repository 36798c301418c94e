package tiered

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/l1"
)

// mapTier is a localTier on a map: no admission, no eviction, no TTL, so
// that a test of the facade sees exactly what the facade installs.
type mapTier[V any] struct {
	mu sync.Mutex
	m  map[string]*entry[V]
}

func (t *mapTier[V]) Get(key string) (*entry[V], bool) { return t.Lookup(key) }
func (t *mapTier[V]) Lookup(key string) (*entry[V], bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[key]
	return e, ok
}
func (t *mapTier[V]) Set(key string, e *entry[V], _ time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m[key] = e
	return true
}
func (t *mapTier[V]) Fill(key string, e *entry[V], ttl time.Duration) { t.Set(key, e, ttl) }
func (t *mapTier[V]) Delete(key string)                               { t.mu.Lock(); delete(t.m, key); t.mu.Unlock() }
func (t *mapTier[V]) Clear()                                          { t.mu.Lock(); clear(t.m); t.mu.Unlock() }
func (t *mapTier[V]) Wait()                                           {}
func (t *mapTier[V]) Close()                                          {}
func (t *mapTier[V]) Stats() l1.Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return l1.Stats{Items: int64(len(t.m))}
}

func newMapTierCache(t *testing.T) (*Cache[int], *mapTier[int]) {
	t.Helper()
	tier := &mapTier[int]{m: make(map[string]*entry[int])}
	c, err := newCache(Config{}, func(*Cache[int]) (localTier[int], error) { return tier, nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, tier
}

// TestFacadeDrivesItsL1ThroughTheSeam: the facade's reads, writes and
// fences act on whatever L1 it is given. A load that a Delete of its key
// overtakes answers its caller but installs nothing (the fence), and a
// Set is installed before it returns.
func TestFacadeDrivesItsL1ThroughTheSeam(t *testing.T) {
	ctx := context.Background()
	c, tier := newMapTierCache(t)

	if err := c.Set(ctx, "k", 1); err != nil {
		t.Fatal(err)
	}
	if e, ok := tier.Lookup("k"); !ok || e.Value.v != 1 {
		t.Fatalf("after Set, the L1 holds %+v, %v; want 1", e, ok)
	}
	if v, err := c.GetOrLoad(ctx, "k", func(context.Context, string) (int, error) { return 0, errors.New("loaded") }); err != nil || v != 1 {
		t.Fatalf("GetOrLoad = %d, %v; want 1 from L1", v, err)
	}

	v, err := c.GetOrLoad(ctx, "raced", func(ctx context.Context, key string) (int, error) {
		if err := c.Delete(ctx, key); err != nil { // a write overtakes the load
			return 0, err
		}
		return 2, nil
	})
	if err != nil || v != 2 {
		t.Fatalf("GetOrLoad = %d, %v; want the loaded 2", v, err)
	}
	if _, ok := tier.Lookup("raced"); ok {
		t.Error("a load that a Delete overtook was installed in L1")
	}
	if s := c.Stats(); s.FencedFills != 1 || s.L1Items != 1 {
		t.Errorf("FencedFills %d, L1Items %d; want 1 and 1", s.FencedFills, s.L1Items)
	}

	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, ok := tier.Lookup("k"); ok {
		t.Error("Delete left the key in L1")
	}
}
