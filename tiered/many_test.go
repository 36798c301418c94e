package tiered_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

// roundTrips is a go-redis hook counting what reaches Redis: single
// commands and pipelines (the invalidation bus's PUBLISH aside).
type roundTrips struct{ cmds, pipelines atomic.Int64 }

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "publish" {
			h.cmds.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.pipelines.Add(1)
		return next(ctx, cmds)
	}
}

func batchKeys(from, to int) []string {
	var keys []string
	for i := from; i < to; i++ {
		keys = append(keys, fmt.Sprintf("k%04d", i))
	}
	return keys
}

// TestGetOrLoadManyHalfInL2: 1,000 keys, half of them in L2: one pipelined
// L2 round trip before the loader, one loader call with exactly the 500
// missing keys, and every value back.
func TestGetOrLoadManyHalfInL2(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		keys := batchKeys(0, 1000)
		writer := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, DisableInvalidation: true})
		var inL2, notInL2 []string
		for i, k := range keys {
			if i%2 == 0 {
				inL2 = append(inL2, k)
				if err := writer.Set(ctx, k, product{ID: i, Name: "from L2"}); err != nil {
					t.Fatal(err)
				}
			} else {
				notInL2 = append(notInL2, k)
			}
		}
		client := r.Client(t)
		hook := &roundTrips{}
		c := newCache(t, tiered.Config{Redis: client, Namespace: ns})
		// Dial, and have Redis know the lease script (its first use anywhere
		// loads it: one more command and pipeline), outside the count.
		// Two keys, so that the warm-up takes the batch's pipelined path.
		if _, err := c.GetOrLoadMany(ctx, []string{"warm-up", "warm-up-2"}, func(context.Context, []string) (map[string]product, error) {
			return nil, nil
		}); err != nil {
			t.Fatal(err)
		}
		client.AddHook(hook)

		var calls int
		var loaded []string
		var before [2]int64
		got, err := c.GetOrLoadMany(ctx, keys, func(ctx context.Context, missing []string) (map[string]product, error) {
			calls++
			loaded = slices.Clone(missing)
			before = [2]int64{hook.cmds.Load(), hook.pipelines.Load()}
			out := make(map[string]product, len(missing))
			for _, k := range missing {
				out[k] = product{Name: "loaded " + k}
			}
			return out, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(loaded)
		if calls != 1 || !slices.Equal(loaded, notInL2) {
			t.Errorf("loader called %d times with %d keys, want once with the 500 missing", calls, len(loaded))
		}
		if before != [2]int64{0, 1} {
			t.Errorf("before the loader: %d commands and %d pipelines, want one pipeline", before[0], before[1])
		}
		if len(got) != 1000 {
			t.Errorf("got %d values, want 1000", len(got))
		}
		for _, k := range inL2 {
			if got[k].Name != "from L2" {
				t.Fatalf("%s = %+v, want the L2 value", k, got[k])
			}
		}
		for _, k := range notInL2 {
			if got[k].Name != "loaded "+k {
				t.Fatalf("%s = %+v, want the loaded value", k, got[k])
			}
		}
		// The loaded half reached L2 for everyone else.
		other := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, DisableInvalidation: true})
		again, err := other.GetMany(ctx, keys)
		if err != nil || len(again) != 1000 {
			t.Errorf("GetMany from another cache: %d values, %v; want 1000", len(again), err)
		}
		t.Logf("after the loader: %d commands, %d pipelines in all", hook.cmds.Load(), hook.pipelines.Load())
	})
}

// TestGetManyIsOneMGET: a read-only batch is one MGET on one Redis (one per
// hash slot on a cluster, hash tags included), and a key holding another
// type (garbage) reads as absent rather than failing the batch.
func TestGetManyIsOneMGET(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		client := r.Client(t)
		c := newCache(t, tiered.Config{Redis: client, Namespace: ns, L1MaxBytes: 1, DisableInvalidation: true})
		keys := []string{"plain", "{tag}a", "{tag}b", "x{}y", "garbage"}
		for i, k := range keys[:4] {
			if err := c.Set(ctx, k, product{ID: i}); err != nil {
				t.Fatal(err)
			}
		}
		if err := client.RPush(ctx, ns+":garbage", "x").Err(); err != nil {
			t.Fatal(err)
		}
		hook := &roundTrips{}
		client.AddHook(hook)
		got, err := c.GetMany(ctx, append(keys, "absent"))
		if err != nil || len(got) != 4 {
			t.Fatalf("GetMany = %d values, %v; want the 4 set", len(got), err)
		}
		for i, k := range keys[:4] {
			if got[k].ID != i {
				t.Errorf("%s = %+v, want ID %d", k, got[k], i)
			}
		}
		if !r.Cluster() && (hook.cmds.Load() != 1 || hook.pipelines.Load() != 0) {
			t.Errorf("%d commands and %d pipelines, want one MGET", hook.cmds.Load(), hook.pipelines.Load())
		}
	})
}

// TestGetOrLoadManyCoalesces: two overlapping batches and two single
// GetOrLoads running at once load each key exactly once.
func TestGetOrLoadManyCoalesces(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		for _, mode := range []string{"l1-only", "redis"} {
			t.Run(mode, func(t *testing.T) {
				ctx := context.Background()
				cfg := tiered.Config{}
				if mode == "redis" {
					cfg = tiered.Config{Redis: r.Client(t), Namespace: redistest.Namespace(t)}
				}
				c := newCache(t, cfg)
				var mu sync.Mutex
				loads := make(map[string]int)
				count := func(keys ...string) {
					mu.Lock()
					defer mu.Unlock()
					for _, k := range keys {
						loads[k]++
					}
				}
				loadMany := func(ctx context.Context, missing []string) (map[string]product, error) {
					count(missing...)
					time.Sleep(100 * time.Millisecond)
					out := make(map[string]product)
					for _, k := range missing {
						out[k] = product{Name: k}
					}
					return out, nil
				}
				loadOne := func(ctx context.Context, key string) (product, error) {
					count(key)
					time.Sleep(100 * time.Millisecond)
					return product{Name: key}, nil
				}
				var wg sync.WaitGroup
				check := func(got map[string]product, err error, keys []string) {
					if err != nil || len(got) != len(keys) {
						t.Errorf("batch: %d values, %v; want %d", len(got), err, len(keys))
					}
				}
				a, b := batchKeys(0, 100), batchKeys(50, 150)
				wg.Go(func() { got, err := c.GetOrLoadMany(ctx, a, loadMany); check(got, err, a) })
				time.Sleep(20 * time.Millisecond) // a's flights are up
				wg.Go(func() { got, err := c.GetOrLoadMany(ctx, b, loadMany); check(got, err, b) })
				for _, k := range []string{"k0075", "k0120"} {
					wg.Go(func() {
						if v, err := c.GetOrLoad(ctx, k, loadOne); err != nil || v.Name != k {
							t.Errorf("GetOrLoad(%s) = %+v, %v", k, v, err)
						}
					})
				}
				wg.Wait()
				for k, n := range loads {
					if n != 1 {
						t.Errorf("%s loaded %d times", k, n)
					}
				}
				if len(loads) != 150 {
					t.Errorf("%d keys loaded, want 150", len(loads))
				}
			})
		}
	})
}

// TestGetOrLoadManyNegativeAndErrors: keys the loader does not return are
// cached as absent; a failing loader returns what was found and an error,
// and leaves no lease behind.
func TestGetOrLoadManyNegativeAndErrors(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		raw := r.Client(t)
		c := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		var calls atomic.Int64
		onlyEven := func(ctx context.Context, missing []string) (map[string]product, error) {
			calls.Add(1)
			out := make(map[string]product)
			for _, k := range missing {
				if k[len(k)-1]%2 == 0 {
					out[k] = product{Name: k}
				}
			}
			return out, nil
		}
		keys := batchKeys(0, 10)
		got, err := c.GetOrLoadMany(ctx, keys, onlyEven)
		if err != nil || len(got) != 5 {
			t.Fatalf("got %d values, %v; want the 5 even keys", len(got), err)
		}
		if _, err := c.Get(ctx, "k0001"); !errors.Is(err, tiered.ErrNotFound) {
			t.Errorf("Get of a key the loader did not return: %v, want ErrNotFound", err)
		}
		if got, _ := c.GetOrLoadMany(ctx, keys, onlyEven); len(got) != 5 || calls.Load() != 1 {
			t.Errorf("second batch: %d values after %d loads; want 5 from the cache, 1 load", len(got), calls.Load())
		}

		more := batchKeys(100, 110)
		_ = c.Set(ctx, more[0], product{Name: "cached"})
		got, err = c.GetOrLoadMany(ctx, more, func(context.Context, []string) (map[string]product, error) {
			return nil, errors.New("database down")
		})
		if err == nil || len(got) != 1 || got[more[0]].Name != "cached" {
			t.Errorf("failing loader: %v, %v; want the cached value and an error", got, err)
		}
		for _, k := range more[1:] {
			if raw.Exists(ctx, ns+":"+k).Val() != 0 {
				t.Fatalf("%s: a lease was left in L2 after the loader failed", k)
			}
		}
		if _, err := c.GetOrLoadMany(ctx, []string{"ok", ""}, onlyEven); !errors.Is(err, tiered.ErrInvalidKey) {
			t.Errorf("batch with an empty key: %v, want ErrInvalidKey", err)
		}
	})
}

// TestGetOrLoadManyStale: a batch serves values past their TTL while its
// loader fails, within MaxStale, as GetOrLoad does.
func TestGetOrLoadManyStale(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		for _, mode := range []string{"l1-only", "redis"} {
			t.Run(mode, func(t *testing.T) {
				ctx := context.Background()
				clk := newFakeClock()
				cfg := tiered.Config{TTL: 200 * time.Millisecond, MaxStale: 5 * time.Second, Jitter: -1, EarlyRefresh: -1, Clock: clk}
				if mode == "redis" {
					cfg.Redis, cfg.Namespace = r.Client(t), redistest.Namespace(t)
				}
				c := newCache(t, cfg)
				var fail atomic.Bool
				load := func(ctx context.Context, missing []string) (map[string]product, error) {
					if fail.Load() {
						return nil, errors.New("database down")
					}
					out := make(map[string]product)
					for _, k := range missing {
						out[k] = product{Name: k}
					}
					return out, nil
				}
				keys := batchKeys(0, 10)
				if got, err := c.GetOrLoadMany(ctx, keys, load); err != nil || len(got) != 10 {
					t.Fatalf("first batch: %d values, %v", len(got), err)
				}
				fail.Store(true)
				clk.Advance(300 * time.Millisecond) // past the TTL, within MaxStale
				got, err := c.GetOrLoadMany(ctx, keys, load)
				if err != nil || len(got) != 10 {
					t.Errorf("past the TTL with the loader failing: %d values, %v; want the 10 stale ones", len(got), err)
				}
				if s := c.Stats(); s.StaleOnError != 10 {
					t.Errorf("StaleOnError = %d, want 10", s.StaleOnError)
				}
			})
		}
	})
}
