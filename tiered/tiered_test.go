package tiered_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

func TestMain(m *testing.M) {
	if os.Getenv(peerEnv) != "" {
		runPeer()
		return
	}
	redistest.Main(m)
}

type product struct {
	ID    int    `json:"id"`
	Name  string `json:"name"`
	Price int    `json:"price_cents"`
}

// countingLoader is a hand-made fake source that counts its calls.
type countingLoader struct {
	calls   atomic.Int64
	release chan struct{} // if non-nil, loads wait for it to close
	err     error
}

func (l *countingLoader) load(ctx context.Context, key string) (product, error) {
	l.calls.Add(1)
	if l.release != nil {
		select {
		case <-l.release:
		case <-ctx.Done():
			return product{}, ctx.Err()
		}
	}
	if l.err != nil {
		return product{}, l.err
	}
	return product{ID: len(key), Name: "p-" + key, Price: 100}, nil
}

// newClient returns a go-redis client for the shared test Redis.
func newClient(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: redistest.Addr(t), ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// libraryClient returns tiered.NewRedisClient(url), the library's client
// options, closed when t ends.
func libraryClient(t *testing.T, url string) redis.UniversalClient {
	t.Helper()
	c, err := tiered.NewRedisClient(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// discardLogger is for caches under test: the tests check counters, not log lines.
var discardLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

func newCache(t *testing.T, cfg tiered.Config) *tiered.Cache[product] {
	t.Helper()
	return newTestCache[product](t, cfg)
}

// newTestCache returns a Cache of V that t closes, logging nowhere.
func newTestCache[V any](t *testing.T, cfg tiered.Config) *tiered.Cache[V] {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = discardLogger
	}
	c, err := tiered.New[V](cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestReadThroughFillsBothTiers(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		raw := r.Client(t)
		a := newCache(t, tiered.Config{Redis: raw, Namespace: ns, TTL: time.Minute})
		src := &countingLoader{}

		got, err := a.GetOrLoad(ctx, "p1", src.load)
		if err != nil || got.Name != "p-p1" {
			t.Fatalf("GetOrLoad(p1) = %+v, %v; want p-p1", got, err)
		}
		if n, err := raw.Exists(ctx, ns+":p1").Result(); err != nil || n != 1 {
			t.Fatalf("EXISTS %s:p1 = %d, %v; want 1 (L2 filled)", ns, n, err)
		}
		if ttl := raw.PTTL(ctx, ns+":p1").Val(); ttl <= 0 || ttl > time.Minute {
			t.Errorf("PTTL = %v, want in (0, 1m]", ttl)
		}
		if _, err := a.Get(ctx, "p1"); err != nil {
			t.Fatalf("Get(p1) after load: %v", err)
		}
		if s := a.Stats(); s.L1Hits != 1 || s.Loads != 1 {
			t.Errorf("Stats = %+v, want 1 L1 hit and 1 load", s)
		}

		// Another process: same namespace, its own client. It must find the
		// value in L2 without loading.
		b := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, TTL: time.Minute})
		got, err = b.GetOrLoad(ctx, "p1", src.load)
		if err != nil || got.Name != "p-p1" {
			t.Fatalf("second cache GetOrLoad(p1) = %+v, %v", got, err)
		}
		if s := b.Stats(); s.L2Hits != 1 || s.Loads != 0 {
			t.Errorf("second cache Stats = %+v, want 1 L2 hit, 0 loads", s)
		}
		if n := src.calls.Load(); n != 1 {
			t.Errorf("loader calls = %d, want 1", n)
		}
	})
}

func TestGetOrLoadOneLoadPerKey(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		for _, mode := range []string{"l1-only", "redis"} {
			t.Run(mode, func(t *testing.T) {
				cfg := tiered.Config{}
				if mode == "redis" {
					cfg = tiered.Config{Redis: r.Client(t), Namespace: redistest.Namespace(t)}
				}
				c := newCache(t, cfg)
				src := &countingLoader{release: make(chan struct{})}
				const n = 200
				var started, done sync.WaitGroup
				errs := make(chan error, n)
				for range n {
					started.Add(1)
					done.Add(1)
					go func() {
						defer done.Done()
						started.Done()
						v, err := c.GetOrLoad(context.Background(), "cold", src.load)
						if err == nil && v.Name != "p-cold" {
							err = fmt.Errorf("got %+v", v)
						}
						errs <- err
					}()
				}
				started.Wait()
				close(src.release)
				done.Wait()
				close(errs)
				for err := range errs {
					if err != nil {
						t.Fatalf("GetOrLoad: %v", err)
					}
				}
				if got := src.calls.Load(); got != 1 {
					t.Errorf("loader calls = %d, want 1", got)
				}
			})
		}
	})
}

func TestNotFoundAndNegativeCaching(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		raw := r.Client(t)
		ns := redistest.Namespace(t)
		c := newCache(t, tiered.Config{Redis: raw, Namespace: ns, NegativeTTL: 5 * time.Second})

		if _, err := c.Get(ctx, "missing"); !errors.Is(err, tiered.ErrNotFound) {
			t.Fatalf("Get(missing) error = %v, want ErrNotFound", err)
		}
		src := &countingLoader{err: fmt.Errorf("no row: %w", tiered.ErrNotFound)}
		for i := range 3 {
			if _, err := c.GetOrLoad(ctx, "gone", src.load); !errors.Is(err, tiered.ErrNotFound) {
				t.Fatalf("GetOrLoad(gone) #%d error = %v, want ErrNotFound", i, err)
			}
		}
		if n := src.calls.Load(); n != 1 {
			t.Errorf("loader calls = %d, want 1 (absence cached)", n)
		}
		if ttl := raw.PTTL(ctx, ns+":gone").Val(); ttl <= 0 || ttl > 5*time.Second {
			t.Errorf("negative entry PTTL = %v, want in (0, NegativeTTL]", ttl)
		}
		// Another process sees the cached absence without loading.
		other := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		if _, err := other.GetOrLoad(ctx, "gone", src.load); !errors.Is(err, tiered.ErrNotFound) {
			t.Fatalf("other GetOrLoad(gone) error = %v, want ErrNotFound", err)
		}
		if n := src.calls.Load(); n != 1 {
			t.Errorf("loader calls after other process = %d, want 1", n)
		}

		// Other load errors are returned, not cached.
		failing := &countingLoader{err: errors.New("db down")}
		for range 2 {
			if _, err := c.GetOrLoad(ctx, "err", failing.load); err == nil || !strings.Contains(err.Error(), "db down") {
				t.Fatalf("GetOrLoad(err) error = %v, want db down", err)
			}
		}
		if n := failing.calls.Load(); n != 2 {
			t.Errorf("failing loader calls = %d, want 2 (errors not cached)", n)
		}
	})
}

func TestCorruptL2ValueIsAMiss(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		raw := r.Client(t)
		ns := redistest.Namespace(t)
		c := newCache(t, tiered.Config{Redis: raw, Namespace: ns})
		foreign := map[string]string{
			"text":      "hello",
			"json":      `{"id":1}`,
			"truncated": "\xc7\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10{",
			"huge-len":  "\xc7\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff",
			"bad-json":  "\xc7\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02{x",
			"codec-9":   "\xc7\x01\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02{}",
		}
		var want int64
		for name, val := range foreign {
			if err := raw.Set(ctx, ns+":"+name, val, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Get(ctx, name); !errors.Is(err, tiered.ErrNotFound) {
				t.Errorf("Get(%s) error = %v, want ErrNotFound", name, err)
			}
			want++
			if got := c.Stats().DecodeErrors; got != want {
				t.Errorf("after %s DecodeErrors = %d, want %d", name, got, want)
			}
		}
		// A load repairs the entry.
		src := &countingLoader{}
		if v, err := c.GetOrLoad(ctx, "text", src.load); err != nil || v.Name != "p-text" {
			t.Fatalf("GetOrLoad(text) = %+v, %v", v, err)
		}
		other := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		if v, err := other.Get(ctx, "text"); err != nil || v.Name != "p-text" {
			t.Fatalf("other Get(text) = %+v, %v; want the repaired value", v, err)
		}
	})
}

func TestSetThenGetSeesTheValue(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		for _, mode := range []string{"l1-only", "redis"} {
			t.Run(mode, func(t *testing.T) {
				cfg := tiered.Config{}
				if mode == "redis" {
					cfg = tiered.Config{Redis: r.Client(t), Namespace: redistest.Namespace(t)}
				}
				c := newCache(t, cfg)
				ctx := context.Background()
				// New keys (ristretto admits them asynchronously) and rapid
				// overwrites of one key (a queued older Set must not win).
				for i := range 500 {
					key := fmt.Sprintf("k%d", i)
					if err := c.Set(ctx, key, product{ID: i}); err != nil {
						t.Fatal(err)
					}
					if v, err := c.Get(ctx, key); err != nil || v.ID != i {
						t.Fatalf("Get(%s) after Set = %+v, %v; want ID %d", key, v, err, i)
					}
					if err := c.Set(ctx, "same", product{ID: i}); err != nil {
						t.Fatal(err)
					}
					if v, err := c.Get(ctx, "same"); err != nil || v.ID != i {
						t.Fatalf("Get(same) after Set #%d = %+v, %v", i, v, err)
					}
				}
				if err := c.Delete(ctx, "k1", "k2"); err != nil {
					t.Fatal(err)
				}
				if _, err := c.Get(ctx, "k1"); !errors.Is(err, tiered.ErrNotFound) {
					t.Errorf("Get(k1) after Delete error = %v, want ErrNotFound", err)
				}
				if s := c.Stats(); s.L1Items == 0 || s.L1Bytes == 0 {
					t.Errorf("Stats = %+v, want L1 items and bytes counted", s)
				}
			})
		}
	})
}

func TestL1CopyNeverOutlivesL2Entry(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		writer := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, TTL: 300 * time.Millisecond, Jitter: -1})
		reader := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, L1TTL: time.Hour})
		if err := writer.Set(ctx, "short", product{ID: 1}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, err := reader.Get(ctx, "short"); err != nil {
			t.Fatal(err)
		}
		// The reader's L1 copy must go when the L2 entry does, not after L1TTL.
		for {
			_, err := reader.Get(ctx, "short")
			if errors.Is(err, tiered.ErrNotFound) {
				break
			}
			if time.Since(start) > 2*time.Second {
				t.Fatalf("reader still serves the entry %v after its 300ms L2 TTL", time.Since(start))
			}
			time.Sleep(5 * time.Millisecond)
		}
		if s := reader.Stats(); s.L1Hits == 0 {
			t.Errorf("reader Stats = %+v, want L1 hits before expiry", s)
		}
	})
}

func TestInputLimits(t *testing.T) {
	ctx := context.Background()
	c := newCache(t, tiered.Config{MaxKeyBytes: 8, MaxValueBytes: 64})
	src := &countingLoader{}
	for _, key := range []string{"", "123456789"} {
		if _, err := c.GetOrLoad(ctx, key, src.load); !errors.Is(err, tiered.ErrInvalidKey) {
			t.Errorf("GetOrLoad(%q) error = %v, want ErrInvalidKey", key, err)
		}
		if err := c.Set(ctx, key, product{}); !errors.Is(err, tiered.ErrInvalidKey) {
			t.Errorf("Set(%q) error = %v, want ErrInvalidKey", key, err)
		}
		if err := c.Delete(ctx, "ok", key); !errors.Is(err, tiered.ErrInvalidKey) {
			t.Errorf("Delete(ok, %q) error = %v, want ErrInvalidKey", key, err)
		}
	}
	big := product{Name: strings.Repeat("x", 100)}
	if err := c.Set(ctx, "big", big); !errors.Is(err, tiered.ErrValueTooLarge) {
		t.Errorf("Set(big) error = %v, want ErrValueTooLarge", err)
	}
	if _, err := c.Get(ctx, "big"); !errors.Is(err, tiered.ErrNotFound) {
		t.Errorf("Get(big) error = %v, want ErrNotFound (nothing stored)", err)
	}
	// A loaded value too large to cache is still returned.
	v, err := c.GetOrLoad(ctx, "big", func(context.Context, string) (product, error) { return big, nil })
	if err != nil || v.Name != big.Name {
		t.Errorf("GetOrLoad(big) = %+v, %v; want the loaded value", v, err)
	}
	if _, err := c.GetOrLoad(ctx, "k", nil); err == nil {
		t.Error("GetOrLoad with nil loader: want an error")
	}
}

func TestLoaderPanicIsAnError(t *testing.T) {
	c := newCache(t, tiered.Config{})
	_, err := c.GetOrLoad(context.Background(), "k", func(context.Context, string) (product, error) {
		var p *product
		return *p, nil // a nil dereference, as a buggy loader would make
	})
	if err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("GetOrLoad error = %v, want a panic turned into an error", err)
	}
}

func TestCallerContextBoundsTheWait(t *testing.T) {
	c := newCache(t, tiered.Config{})
	src := &countingLoader{release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.GetOrLoad(ctx, "k", src.load); !errors.Is(err, context.Canceled) {
		t.Fatalf("GetOrLoad with cancelled ctx error = %v, want context.Canceled", err)
	}
	// The load goes on for later callers and fills the cache.
	close(src.release)
	if v, err := c.GetOrLoad(context.Background(), "k", src.load); err != nil || v.Name != "p-k" {
		t.Fatalf("GetOrLoad = %+v, %v", v, err)
	}
}

func TestConfigErrors(t *testing.T) {
	raw := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer raw.Close()
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer ring.Close()
	tests := []struct {
		name string
		cfg  tiered.Config
		want string
	}{
		{"no namespace", tiered.Config{Redis: raw}, "Namespace is required"},
		{"space in namespace", tiered.Config{Redis: raw, Namespace: "a b"}, "Namespace"},
		{"negative TTL", tiered.Config{TTL: -time.Second}, "must not be negative"},
		{"jitter", tiered.Config{Jitter: 1.5}, "Jitter"},
		{"value limit", tiered.Config{MaxValueBytes: 1 << 30}, "MaxValueBytes"},
		{"invalidation window", tiered.Config{InvalidationWindow: time.Second}, "InvalidationWindow"},
		{"ring", tiered.Config{Redis: ring, Namespace: "ns"}, "Ring"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tiered.New[int](tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%s) error = %v, want it to mention %q", tt.name, err, tt.want)
			}
		})
	}
}

func TestCloseStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c, err := tiered.New[product](tiered.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Set(ctx, "k", product{ID: 1}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.Get(ctx, "k"); !errors.Is(err, tiered.ErrClosed) {
		t.Errorf("Get after Close error = %v, want ErrClosed", err)
	}
	if err := c.Set(ctx, "k", product{}); !errors.Is(err, tiered.ErrClosed) {
		t.Errorf("Set after Close error = %v, want ErrClosed", err)
	}
}

// commandCounter is a go-redis hook that counts the commands sent.
type commandCounter struct{ n atomic.Int64 }

func (h *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "publish" { // the invalidation bus's heartbeats
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

func TestL2HitIsOneRoundTrip(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		writer := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		if err := writer.Set(ctx, "k", product{ID: 1}); err != nil {
			t.Fatal(err)
		}
		client := r.Client(t)
		hook := &commandCounter{}
		client.AddHook(hook)
		reader := newCache(t, tiered.Config{Redis: client, Namespace: ns})
		if err := client.Ping(ctx).Err(); err != nil { // dial now: a new connection sends HELLO and CLIENT SETINFO
			t.Fatal(err)
		}
		hook.n.Store(0)
		if v, err := reader.Get(ctx, "k"); err != nil || v.ID != 1 {
			t.Fatalf("Get(k) = %+v, %v", v, err)
		}
		if n := hook.n.Load(); n != 1 {
			t.Errorf("an L2 hit sent %d commands, want 1 (the expiry travels in the value)", n)
		}
	})
}

// TestCloseEndsFlightsInProgress: Close cancels the loads that flights and
// background refreshes are running for callers who left, waits for them,
// and leaves no goroutine behind.
func TestCloseEndsFlightsInProgress(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c, err := tiered.New[product](tiered.Config{Logger: discardLogger})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	blocking := func(ctx context.Context, key string) (product, error) {
		close(started)
		<-ctx.Done() // a loader that honours its context, and nothing else
		return product{}, ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }() // the caller leaves; the flight goes on
	if _, err := c.GetOrLoad(ctx, "k", blocking); !errors.Is(err, context.Canceled) {
		t.Fatalf("GetOrLoad = %v, want the caller's cancellation", err)
	}
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return while a flight's load was in progress")
	}
}
