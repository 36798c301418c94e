package warmup_test

import (
	"context"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
	"github.com/tiercache/tiercache/warmup"
)

// BenchmarkWarmFromL2: warming 100,000 keys, all in L2, into a cold L1:
// warmup.Run's pipelined batches vs a loop of single Gets. Each op is one
// whole warm-up of a new cache; run with -benchtime 1x -count N.
func BenchmarkWarmFromL2(b *testing.B) {
	addr, ns := redistest.Addr(b), redistest.Namespace(b)
	all := keys(100_000)
	fill(b, newCache(b, tiered.Config{Redis: newClient(b, addr), Namespace: ns, DisableInvalidation: true}), all)
	ctx := context.Background()
	cold := func(b *testing.B) *tiered.Cache[string] {
		return newCache(b, tiered.Config{Redis: newClient(b, addr), Namespace: ns, DisableInvalidation: true, L1MaxBytes: 256 << 20})
	}
	b.Run("impl=gets", func(b *testing.B) {
		for b.Loop() {
			c := cold(b)
			for _, k := range all {
				if _, err := c.Get(ctx, k); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("impl=warmup", func(b *testing.B) {
		for b.Loop() {
			c := cold(b)
			rep, err := warmup.Run(ctx, c, warmup.FromSlice(all), warmup.Config[string]{Logger: discard})
			if err != nil || rep.FromCache != len(all) {
				b.Fatalf("%+v, %v", rep, err)
			}
		}
	})
}
