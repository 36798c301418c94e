package tiered_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

// Benchmarks compare each tier with its baseline in the same process.
// Sub-benchmarks are named impl=<name>, so that
//
//	benchstat -col /impl bench.txt
//
// prints the facade's cost as a ratio of the baseline's. docs/benchmarks.md
// has the command and the results.

const benchKeys = 1024

func benchValue(i int) product {
	return product{ID: i, Name: fmt.Sprintf("product %d with a name of ordinary length", i), Price: 1999}
}

func benchKey(i int) string { return fmt.Sprintf("product:%d", i) }

// BenchmarkL1Hit: a Get answered by L1 vs a raw ristretto Get of the same
// data, ristretto configured as tiered configures it.
func BenchmarkL1Hit(b *testing.B) {
	keys := make([]string, benchKeys)
	for i := range keys {
		keys[i] = benchKey(i)
	}
	// The baseline stores with a TTL, as tiered does: ristretto's Get then
	// reads the clock, which is most of its cost where time.Now is slow.
	// impl=ristretto-nottl shows the cost of ristretto without expiry.
	// impl=ristretto-main has impl=tiered-main's history: 10,000 later
	// values stored and deleted again, which leave ristretto's maps larger
	// and its Gets slower; it is the baseline for a hit in ristretto.
	for _, tc := range []struct {
		name  string
		ttl   time.Duration
		after int
	}{
		{"impl=ristretto", time.Minute, 0},
		{"impl=ristretto-nottl", 0, 0},
		{"impl=ristretto-main", time.Minute, 10_000},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r, err := ristretto.NewCache(&ristretto.Config[string, *product]{
				NumCounters: (64 << 20) / 64, MaxCost: 64 << 20, BufferItems: 64, IgnoreInternalCost: true,
			})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			for i, k := range keys {
				v := benchValue(i)
				r.SetWithTTL(k, &v, 100, tc.ttl)
			}
			for i := range tc.after {
				v := benchValue(i)
				r.SetWithTTL(fmt.Sprintf("after-%d", i), &v, 100, tc.ttl)
			}
			r.Wait()
			for i := range tc.after {
				r.Del(fmt.Sprintf("after-%d", i))
			}
			r.Wait()
			runHits(b, func(k string) bool { _, ok := r.Get(k); return ok }, keys)
		})
	}
	// Values just stored sit in L1's admission window; impl=tiered reads
	// them there (a ristretto miss, then a sync.Map hit).
	b.Run("impl=tiered", func(b *testing.B) {
		benchTieredHits(b, tiered.Config{}, keys, 0)
	})
	// impl=tiered-main reads them in ristretto, where the window put them
	// when 10,000 later values (deleted again) pushed them out.
	b.Run("impl=tiered-main", func(b *testing.B) {
		benchTieredHits(b, tiered.Config{}, keys, 10_000)
	})
	// Values from a loader can be refreshed early (XFetch), so their hits
	// also read the coarse clock, whose goroutine then runs.
	b.Run("impl=tiered-loaded", func(b *testing.B) {
		c, err := tiered.New[product](tiered.Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		ctx := context.Background()
		for i, k := range keys {
			if _, err := c.GetOrLoad(ctx, k, func(context.Context, string) (product, error) { return benchValue(i), nil }); err != nil {
				b.Fatal(err)
			}
		}
		miss := func(context.Context, string) (product, error) { return product{}, fmt.Errorf("miss") }
		runHits(b, func(k string) bool { _, err := c.GetOrLoad(ctx, k, miss); return err == nil }, keys)
	})
	// With Redis, L1 hits also ask the invalidation bus whether L1 may be
	// trusted: one atomic load.
	b.Run("impl=tiered-bus", func(b *testing.B) {
		rdb := redis.NewClient(&redis.Options{Addr: redistest.Addr(b), ContextTimeoutEnabled: true})
		defer rdb.Close()
		s := benchTieredHits(b, tiered.Config{Redis: rdb, Namespace: redistest.Namespace(b)}, keys, 0)
		if !s.Bus.Fresh || s.StaleSkips > 0 {
			b.Fatalf("bus not fresh during the benchmark: %+v", s)
		}
	})
}

// benchTieredHits fills a Cache configured by cfg with keys, then with
// after other keys that it deletes again, runs the hits and returns its
// Stats.
func benchTieredHits(b *testing.B, cfg tiered.Config, keys []string, after int) tiered.Stats {
	c, err := tiered.New[product](cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for i, k := range keys {
		if err := c.Set(ctx, k, benchValue(i)); err != nil {
			b.Fatal(err)
		}
	}
	for i := range after {
		if err := c.Set(ctx, fmt.Sprintf("after-%d", i), benchValue(i)); err != nil {
			b.Fatal(err)
		}
	}
	for i := range after {
		if err := c.Delete(ctx, fmt.Sprintf("after-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	runHits(b, func(k string) bool { _, err := c.Get(ctx, k); return err == nil }, keys)
	return c.Stats()
}

// runHits runs get over keys serially and, as a second figure, in parallel.
func runHits(b *testing.B, get func(string) bool, keys []string) {
	b.Run("par=1", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if !get(keys[i&(benchKeys-1)]) {
				b.Fatal("miss")
			}
		}
	})
	b.Run("par=P", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				if !get(keys[i&(benchKeys-1)]) {
					b.Error("miss")
					return
				}
			}
		})
	})
}

// BenchmarkL2Hit: a Get answered by L2 (L1 too small to keep anything, so
// every Get crosses the network, decodes and tries to fill L1) vs a raw
// go-redis GET of the same JSON plus the same decode.
func BenchmarkL2Hit(b *testing.B) {
	ctx := context.Background()
	addr := redistest.Addr(b)
	ns := redistest.Namespace(b)
	newClient := func() *redis.Client {
		return redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	}
	b.Run("impl=go-redis", func(b *testing.B) {
		rdb := newClient()
		defer rdb.Close()
		keys := make([]string, benchKeys)
		for i := range keys {
			keys[i] = ns + ":raw:" + benchKey(i)
			js, _ := json.Marshal(benchValue(i))
			rdb.Set(ctx, keys[i], js, 0)
		}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			data, err := rdb.Get(ctx, keys[i&(benchKeys-1)]).Bytes()
			if err != nil {
				b.Fatal(err)
			}
			var p product
			if err := json.Unmarshal(data, &p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("impl=tiered", func(b *testing.B) {
		rdb := newClient()
		defer rdb.Close()
		c, err := tiered.New[product](tiered.Config{Redis: rdb, Namespace: ns, L1MaxBytes: 1})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		keys := make([]string, benchKeys)
		for i := range keys {
			keys[i] = benchKey(i)
			if err := c.Set(ctx, keys[i], benchValue(i)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := c.Get(ctx, keys[i&(benchKeys-1)]); err != nil {
				b.Fatal(err)
			}
		}
		if s := c.Stats(); s.L1Hits > 0 {
			b.Fatalf("L1 answered %d Gets; this benchmark is about L2", s.L1Hits)
		}
	})
}

// BenchmarkBatchFromL2: 100 keys, all in L2 and none in L1 (L1 too small
// to keep anything): one GetOrLoadMany vs 100 sequential Gets.
func BenchmarkBatchFromL2(b *testing.B) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Addr(b), ContextTimeoutEnabled: true})
	defer rdb.Close()
	// L1MaxBytes 1 keeps nearly nothing in L1; the few reads that its
	// admission window still answers are reported as l1-hits/op.
	c, err := tiered.New[product](tiered.Config{Redis: rdb, Namespace: redistest.Namespace(b), L1MaxBytes: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = benchKey(i)
		if err := c.Set(ctx, keys[i], benchValue(i)); err != nil {
			b.Fatal(err)
		}
	}
	noLoad := func(_ context.Context, missing []string) (map[string]product, error) {
		return nil, fmt.Errorf("%d keys not in L2", len(missing))
	}
	b.Run("impl=sequential-gets", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, k := range keys {
				if _, err := c.Get(ctx, k); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("impl=getorloadmany", func(b *testing.B) {
		b.ReportAllocs()
		hits := c.Stats().L1Hits
		for b.Loop() {
			if got, err := c.GetOrLoadMany(ctx, keys, noLoad); err != nil || len(got) != len(keys) {
				b.Fatal(len(got), err)
			}
		}
		b.ReportMetric(float64(c.Stats().L1Hits-hits)/float64(b.N), "l1-hits/op")
	})
	// The baseline of a read-only batch: one MGET of the same values, stored
	// as plain JSON beside the cache's, and their decoding.
	raw := make([]string, len(keys))
	for i, k := range keys {
		raw[i] = "raw:" + redistest.Namespace(b) + ":" + k
		v, _ := json.Marshal(benchValue(i))
		if err := rdb.Set(ctx, raw[i], v, time.Hour).Err(); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("impl=mget-decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			vals, err := rdb.MGet(ctx, raw...).Result()
			if err != nil {
				b.Fatal(err)
			}
			out := make(map[string]product, len(vals))
			for i, v := range vals {
				var p product
				if err := json.Unmarshal([]byte(v.(string)), &p); err != nil {
					b.Fatal(err)
				}
				out[keys[i]] = p
			}
		}
	})
	b.Run("impl=getmany", func(b *testing.B) {
		b.ReportAllocs()
		hits := c.Stats().L1Hits
		for b.Loop() {
			if got, err := c.GetMany(ctx, keys); err != nil || len(got) != len(keys) {
				b.Fatal(len(got), err)
			}
		}
		b.ReportMetric(float64(c.Stats().L1Hits-hits)/float64(b.N), "l1-hits/op")
	})
}

// BenchmarkWriteStrategies: the latency of one write against a source that
// takes 2 ms per write (per batch for write-behind, whose flushers run in
// the same process meanwhile): WriteThrough waits for the source,
// WriteBehind.Set only for Redis. impl=set is a plain cache-aside Set.
func BenchmarkWriteStrategies(b *testing.B) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Addr(b), ContextTimeoutEnabled: true})
	defer rdb.Close()
	ns := redistest.Namespace(b)
	defer func() {
		iter := rdb.Scan(ctx, 0, ns+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	}()
	c, err := tiered.New[product](tiered.Config{Redis: rdb, Namespace: ns})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const sourceLatency = 2 * time.Millisecond
	write := func(ctx context.Context, key string, v product) error {
		time.Sleep(sourceLatency)
		return nil
	}
	b.Run("impl=write-through", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := c.WriteThrough(ctx, benchKey(i%benchKeys), benchValue(i), write); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("impl=write-behind", func(b *testing.B) {
		w, err := tiered.NewWriteBehind(c, tiered.WriteBehindConfig[product]{
			Flush: func(ctx context.Context, ws []tiered.PendingWrite[product]) error {
				time.Sleep(sourceLatency)
				return nil
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := w.Set(ctx, benchKey(i%benchKeys), benchValue(i)); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := w.Close(cctx); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("impl=set", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := c.Set(ctx, benchKey(i%benchKeys), benchValue(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
