package warmup_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
	"github.com/tiercache/tiercache/warmup"
)

func TestMain(m *testing.M) { redistest.Main(m) }

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func newClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

func newCache(t testing.TB, cfg tiered.Config) *tiered.Cache[string] {
	t.Helper()
	cfg.Logger = discard
	c, err := tiered.New[string](cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func keys(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("k%05d", i)
	}
	return out
}

// fill puts keys into L2 through a cache of their own, in batches.
func fill(t testing.TB, c *tiered.Cache[string], ks []string) {
	t.Helper()
	for i := 0; i < len(ks); i += 1000 {
		batch := ks[i:min(i+1000, len(ks))]
		if _, err := c.GetOrLoadMany(context.Background(), batch, func(_ context.Context, missing []string) (map[string]string, error) {
			out := make(map[string]string, len(missing))
			for _, k := range missing {
				out[k] = "v-" + k
			}
			return out, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// gauge counts loads in flight and remembers the most.
type gauge struct{ now, most atomic.Int64 }

func (g *gauge) enter() {
	n := g.now.Add(1)
	for m := g.most.Load(); n > m && !g.most.CompareAndSwap(m, n); m = g.most.Load() {
	}
}
func (g *gauge) leave() { g.now.Add(-1) }

// TestWarmupL2ThenLoader: 10,000 keys with 70 % in L2: exactly the other
// 30 % reach the loader, never more than Concurrency at a time.
//
// Nothing here depends on the machine's speed: every cache has an
// L2Timeout far beyond any stall of a loaded machine (at the 250 ms
// default, a pipelined read that timed out under load counted as "not in
// L2" and sent its keys to the loader), the fills are Strict so that an L2
// write they could not make fails the test instead of leaving keys out of
// L2, and the first loader call waits for a second one to start, so that
// loads overlapping is a fact of the warm-up, not of scheduling luck.
func TestWarmupL2ThenLoader(t *testing.T) {
	const l2Timeout = time.Minute
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ns := redistest.Namespace(t)
		all := keys(10_000)
		var inL2, notInL2 []string
		for i, k := range all {
			if i%10 < 7 {
				inL2 = append(inL2, k)
			} else {
				notInL2 = append(notInL2, k)
			}
		}
		fill(t, newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, DisableInvalidation: true, L2Timeout: l2Timeout, Strict: true}), inL2)

		for _, batch := range []bool{false, true} {
			t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
				ns := ns
				if batch {
					// A second namespace with the same 70 %, for a cold L2 of
					// the missing 30 % again.
					ns += "-b"
					fill(t, newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, DisableInvalidation: true, L2Timeout: l2Timeout, Strict: true}), inL2)
				}
				c := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, L2Timeout: l2Timeout})
				var mu sync.Mutex
				var loaded []string
				var g gauge
				// The first loader call holds its slot until a second call
				// is in flight (or 10 s pass, when loads never overlap and
				// the 2..4 check below fails): only a warm-up that runs
				// loads concurrently gets past it, however slow the machine.
				var started atomic.Bool
				overlap := func() {
					if started.Swap(true) {
						return
					}
					for end := time.Now().Add(10 * time.Second); g.most.Load() < 2 && time.Now().Before(end); {
						time.Sleep(time.Millisecond)
					}
				}
				cfg := warmup.Config[string]{Concurrency: 4, BatchSize: 250, Logger: discard}
				if batch {
					cfg.LoadMany = func(_ context.Context, missing []string) (map[string]string, error) {
						g.enter()
						defer g.leave()
						overlap()
						time.Sleep(5 * time.Millisecond)
						mu.Lock()
						loaded = append(loaded, missing...)
						mu.Unlock()
						out := make(map[string]string)
						for _, k := range missing {
							out[k] = "loaded"
						}
						return out, nil
					}
				} else {
					cfg.Load = func(_ context.Context, key string) (string, error) {
						g.enter()
						defer g.leave()
						overlap()
						time.Sleep(time.Millisecond)
						mu.Lock()
						loaded = append(loaded, key)
						mu.Unlock()
						return "loaded", nil
					}
				}
				rep, err := warmup.Run(context.Background(), c, warmup.FromSlice(all), cfg)
				if err != nil {
					t.Fatal(err)
				}
				slices.Sort(loaded)
				if !slices.Equal(loaded, notInL2) {
					t.Errorf("loader got %d keys, want exactly the %d not in L2", len(loaded), len(notInL2))
				}
				if most := g.most.Load(); most > 4 || most < 2 {
					t.Errorf("at most %d loads in flight, want 2..4 (the cap is 4)", most)
				}
				want := warmup.Report{Total: 10_000, FromCache: 7_000, Loaded: 3_000}
				rep.Duration = 0
				if rep != want {
					t.Errorf("report %+v, want %+v", rep, want)
				}
				t.Logf("batch=%v: %d keys loaded, at most %d loads in flight", batch, len(loaded), g.most.Load())
			})
		}
	})
}

// TestWarmupDoesNotOverwriteAnInvalidation: a key written elsewhere while
// its warm-up load is in flight keeps the newer value, in L1 and in L2.
func TestWarmupDoesNotOverwriteAnInvalidation(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ns := redistest.Namespace(t)
		c := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		writer := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		started, release := make(chan struct{}), make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := warmup.Run(context.Background(), c, warmup.FromSlice([]string{"k"}), warmup.Config[string]{
				Logger: discard,
				Load: func(context.Context, string) (string, error) {
					close(started)
					<-release
					return "old", nil // read before the write below
				},
			})
			done <- err
		}()
		<-started
		if err := writer.Set(context.Background(), "k", "new"); err != nil {
			t.Fatal(err)
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if v, err := c.Get(context.Background(), "k"); err != nil || v != "new" {
			t.Errorf("after warm-up, Get(k) = %q, %v; want the newer %q", v, err, "new")
		}
		other := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, DisableInvalidation: true})
		if v, _ := other.Get(context.Background(), "k"); v != "new" {
			t.Errorf("L2 holds %q after warm-up, want %q", v, "new")
		}
	})
}

// TestWarmupCancelled: cancelled midway, warm-up returns a partial report
// and the cancellation.
func TestWarmupCancelled(t *testing.T) {
	c := newCache(t, tiered.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int64
	rep, err := warmup.Run(ctx, c, warmup.FromSlice(keys(1000)), warmup.Config[string]{
		Logger: discard, Concurrency: 2,
		Load: func(ctx context.Context, key string) (string, error) {
			if calls.Add(1) == 50 {
				cancel()
			}
			time.Sleep(time.Millisecond)
			return "v", nil
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	if rep.Loaded == 0 || rep.Skipped == 0 || rep.Loaded+rep.Failed+rep.Skipped != 1000 {
		t.Errorf("report %+v, want a partial warm-up that accounts for every key", rep)
	}
}

// TestWarmupRedisDown: with Redis unreachable, every key goes to the
// loader, and warm-up succeeds.
func TestWarmupRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	rdb, err := tiered.NewRedisClient("redis://" + srv.Addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	c := newCache(t, tiered.Config{Redis: rdb, Namespace: redistest.Namespace(t), StalenessBound: 10 * time.Second})
	srv.Stop()
	rep, err := warmup.Run(context.Background(), c, warmup.FromSlice(keys(200)), warmup.Config[string]{
		Logger: discard,
		Load:   func(context.Context, string) (string, error) { return "v", nil },
	})
	if err != nil || rep.Loaded != 200 || rep.FromCache != 0 {
		t.Errorf("warm-up with Redis down: %+v, %v; want 200 loaded", rep, err)
	}
	if v, err := c.Get(context.Background(), "k00007"); err != nil || v != "v" {
		t.Errorf("after warm-up, Get = %q, %v; want it from L1", v, err)
	}
}

func TestWarmupLoaderFailures(t *testing.T) {
	c := newCache(t, tiered.Config{})
	load := func(_ context.Context, key string) (string, error) {
		switch {
		case strings.HasSuffix(key, "1"):
			return "", errors.New("database hiccup")
		case strings.HasSuffix(key, "2"):
			return "", tiered.ErrNotFound
		}
		return "v", nil
	}
	rep, err := warmup.Run(context.Background(), c, warmup.FromSlice(keys(100)), warmup.Config[string]{Logger: discard, Load: load})
	if err != nil || rep.Failed != 10 || rep.NotFound != 10 || rep.Loaded != 80 {
		t.Errorf("report %+v, %v; want 10 failed, 10 not found, 80 loaded, no error", rep, err)
	}
	_, err = warmup.Run(context.Background(), newCache(t, tiered.Config{}), warmup.FromSlice(keys(100)),
		warmup.Config[string]{Logger: discard, Load: load, FailOnLoadError: true, Concurrency: 1})
	if err == nil {
		t.Errorf("FailOnLoadError: no error")
	}
}

func TestSourcesAndProgress(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		rdb := r.Client(t)
		ns := redistest.Namespace(t)
		ctx := context.Background()
		rdb.ZAdd(ctx, ns+":hot", redis.Z{Score: 1, Member: "cold"}, redis.Z{Score: 9, Member: "hot"}, redis.Z{Score: 5, Member: "warm"})
		rdb.SAdd(ctx, ns+":set", "a", "b")
		t.Cleanup(func() { rdb.Del(context.Background(), ns+":hot", ns+":set") })
		for name, tt := range map[string]struct {
			src  warmup.Source
			want []string
		}{
			"reader":     {warmup.FromReader(strings.NewReader("a\n\n b \nc\n")), []string{"a", "b", "c"}},
			"sorted set": {warmup.FromRedisSortedSet(rdb, ns+":hot", 2), []string{"hot", "warm"}},
			"set":        {warmup.FromRedisSet(rdb, ns+":set"), []string{"a", "b"}},
		} {
			got, err := tt.src(ctx)
			slices.Sort(got)
			want := slices.Clone(tt.want)
			slices.Sort(want)
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("%s: %v, %v; want %v", name, got, err, tt.want)
			}
		}

		var reports []warmup.Progress
		var mu sync.Mutex
		tracker := &warmup.Tracker{}
		e := echo.New()
		e.GET("/ready", tracker.Handler(0))
		ready := func() int {
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
			return rec.Code
		}
		if code := ready(); code != http.StatusServiceUnavailable {
			t.Errorf("readiness before warm-up = %d, want 503", code)
		}
		_, err := warmup.Run(ctx, newCache(t, tiered.Config{}), warmup.FromSlice(keys(300)), warmup.Config[string]{
			Logger: discard, Tracker: tracker, ProgressEvery: time.Millisecond,
			Load: func(context.Context, string) (string, error) { time.Sleep(100 * time.Microsecond); return "v", nil },
			Progress: func(p warmup.Progress) {
				mu.Lock()
				reports = append(reports, p)
				mu.Unlock()
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if code := ready(); code != http.StatusOK {
			t.Errorf("readiness after warm-up = %d, want 200", code)
		}
		if last := reports[len(reports)-1]; len(reports) < 2 || last.Done != 300 || last.Total != 300 {
			t.Errorf("%d progress reports, last %+v; want several, ending at 300/300", len(reports), last)
		}
	})
}

// TestWarmFromHotKeys: a replica that has been reading records its hot
// keys; a new replica warms with them.
func TestWarmFromHotKeys(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ns := redistest.Namespace(t)
		ctx := context.Background()
		t.Cleanup(func() { r.Client(t).Del(context.Background(), ns+"#hot") })
		old := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, HotKeys: 10, HotKeysInterval: 20 * time.Millisecond})
		all := keys(100)
		fill(t, old, all)
		for range 20_000 {
			if _, err := old.Get(ctx, all[0]); err != nil { // one hot key
				t.Fatal(err)
			}
		}
		fresh := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		var rep warmup.Report
		for end := time.Now().Add(3 * time.Second); rep.FromCache == 0 && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			var err error
			if rep, err = warmup.Run(ctx, fresh, warmup.FromHotKeys(fresh, 10), warmup.Config[string]{Logger: discard}); err != nil {
				t.Fatal(err)
			}
		}
		if rep.FromCache == 0 {
			t.Fatalf("no hot key warmed: %+v", rep)
		}
		if s := fresh.Stats(); s.L1Items == 0 {
			t.Errorf("the warmed replica's L1 is empty")
		}
	})
}

// TestWarmupRateLimitPastDeadline: a rate limit that cannot be kept within
// the deadline ends the warm-up with an error, not silently skipped keys.
func TestWarmupRateLimitPastDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	rep, err := warmup.Run(ctx, newCache(t, tiered.Config{}), warmup.FromSlice(keys(100)), warmup.Config[string]{
		Logger: discard, Rate: 5, Burst: 1,
		Load: func(context.Context, string) (string, error) { return "v", nil },
	})
	if err == nil || rep.Skipped == 0 || rep.Loaded+rep.Skipped != 100 {
		t.Errorf("rate-limited warm-up past its deadline: %+v, %v; want an error and the skipped keys counted", rep, err)
	}
}

func TestTrackerReadyAfterFailedSource(t *testing.T) {
	tracker := &warmup.Tracker{}
	_, err := warmup.Run(context.Background(), newCache(t, tiered.Config{}),
		func(context.Context) ([]string, error) { return nil, errors.New("no key list") },
		warmup.Config[string]{Logger: discard, Tracker: tracker})
	if err == nil || !tracker.Ready(0) {
		t.Errorf("after a source failure: err %v, ready %v; want the error, and ready", err, tracker.Ready(0))
	}
}
