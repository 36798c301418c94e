package tiered_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

// BenchmarkMiss: GetOrLoad and GetOrLoadMany of keys in neither tier, with
// a loader that answers at once, so that what is measured is the fill
// protocol's own cost: the L2 read, the lease, the compare-and-set fill
// and the L1 install. A batch is 10 keys.
func BenchmarkMiss(b *testing.B) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Addr(b), ContextTimeoutEnabled: true})
	defer rdb.Close()
	c, err := tiered.New[product](tiered.Config{Redis: rdb, Namespace: redistest.Namespace(b), L1MaxBytes: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	load := func(_ context.Context, key string) (product, error) { return benchValue(len(key)), nil }
	loadMany := func(_ context.Context, keys []string) (map[string]product, error) {
		out := make(map[string]product, len(keys))
		for _, k := range keys {
			out[k] = benchValue(len(k))
		}
		return out, nil
	}
	b.Run("op=GetOrLoad", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := c.GetOrLoad(ctx, "one:"+strconv.Itoa(i), load); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("op=GetOrLoadMany", func(b *testing.B) {
		b.ReportAllocs()
		keys := make([]string, 10)
		for i := 0; b.Loop(); i++ {
			for j := range keys {
				keys[j] = "many:" + strconv.Itoa(i*len(keys)+j)
			}
			if _, err := c.GetOrLoadMany(ctx, keys, loadMany); err != nil {
				b.Fatal(err)
			}
		}
	})
}
