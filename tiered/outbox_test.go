package tiered_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

// proxied starts a private redis-server behind a fault proxy and returns
// the proxy, a library-default client through it (tiered.NewRedisClient),
// and a client straight to the server, which no fault touches.
func proxied(t *testing.T) (*redistest.Server, *faultproxy.Proxy, func() redis.UniversalClient, *redis.Client) {
	t.Helper()
	srv := redistest.Start(t)
	p := faultproxy.Start(t, srv.Addr)
	through := func() redis.UniversalClient {
		c, err := tiered.NewRedisClient("redis://" + p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { raw.Close() })
	return srv, p, through, raw
}

// TestOutboxReplaysWhenRedisAnswers: writes made while Redis refuses
// connections fail with ErrL2Unavailable and leave the old entries in
// Redis; once Redis answers, the writer's outbox deletes them, and another
// process no longer finds them. With the outbox keeping nothing, the old
// entries stay, and the other process serves them: the test can see what
// the outbox prevents.
func TestOutboxReplaysWhenRedisAnswers(t *testing.T) {
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprintf("outbox=%v", keep), func(t *testing.T) {
			ctx := context.Background()
			_, p, through, raw := proxied(t)
			ns := redistest.Namespace(t)
			reader := sdkmetric.NewManualReader()
			a := newIntCache(t, tiered.Config{Redis: through(), Namespace: ns, WriteTimeout: 200 * time.Millisecond,
				MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
			b := newIntCache(t, tiered.Config{Redis: through(), Namespace: ns})
			if !keep {
				tiered.SetOutboxLimit(a, 0)
			}
			for _, k := range []string{"set", "del"} {
				if err := a.Set(ctx, k, 1); err != nil {
					t.Fatal(err)
				}
			}
			if err := a.Set(ctx, "tagged", 1, tiered.WithTags("t")); err != nil {
				t.Fatal(err)
			}

			p.Refuse()
			if err := a.Set(ctx, "set", 2); !errors.Is(err, tiered.ErrL2Unavailable) {
				t.Errorf("Set with Redis refusing: error %v, want ErrL2Unavailable", err)
			}
			if err := a.Delete(ctx, "del"); !errors.Is(err, tiered.ErrL2Unavailable) {
				t.Errorf("Delete with Redis refusing: error %v, want ErrL2Unavailable", err)
			}
			if err := a.InvalidateTags(ctx, "t"); !errors.Is(err, tiered.ErrL2Unavailable) {
				t.Errorf("InvalidateTags with Redis refusing: error %v, want ErrL2Unavailable", err)
			}
			if v, err := a.Get(ctx, "set"); err != nil || v != 2 {
				t.Errorf("writer's Get after its failed Set = %d, %v; want 2 from its L1", v, err)
			}
			keys := []string{ns + ":set", ns + ":del", ns + ":tagged"}
			if n := raw.Exists(ctx, keys...).Val(); n != 3 {
				t.Fatalf("%d of the old entries in Redis while it refused, want all 3", n)
			}
			if got := metricSum(t, reader, "tiercache.writes", attribute.String("result", "failed")); got != 3 {
				t.Errorf("metric tiercache.writes{result=failed} = %d, want 3", got)
			}
			if got, want := metricSum(t, reader, "tiercache.outbox.held"), map[bool]int64{true: 3, false: 0}[keep]; got != want {
				t.Errorf("metric tiercache.outbox.held = %d, want %d", got, want)
			}

			p.Pass()
			if !keep {
				// b hears Redis again and flushes, then reads the old
				// entries from L2.
				eventually(t, 10*time.Second, "b serves again", func() bool { return b.Stats().Bus.Fresh })
				for _, k := range []string{"set", "del", "tagged"} {
					if v, err := b.Get(ctx, k); err != nil || v != 1 {
						t.Errorf("without the outbox, b.Get(%s) = %d, %v; want the old 1 (the stale read the outbox prevents)", k, v, err)
					}
				}
				return
			}
			eventually(t, 10*time.Second, "the outbox replays", func() bool { return a.Stats().OutboxHeld == 0 })
			if n := raw.Exists(ctx, keys...).Val(); n != 0 {
				t.Errorf("%d old entries left in Redis after the replay, want 0", n)
			}
			eventually(t, 10*time.Second, "b serves again", func() bool { return b.Stats().Bus.Fresh })
			for _, k := range []string{"set", "del", "tagged"} {
				if v, err := b.Get(ctx, k); !errors.Is(err, tiered.ErrNotFound) {
					t.Errorf("after the replay, b.Get(%s) = %d, %v; want a miss", k, v, err)
				}
			}
			if s := a.Stats(); s.FailedWrites != 3 || s.OutboxReplays == 0 {
				t.Errorf("writer's Stats = %+v, want 3 failed writes and a replay", s)
			}
			// L2 is trusted again: a write goes through, and b reads it.
			if err := a.Set(ctx, "set", 3); err != nil {
				t.Fatal(err)
			}
			if v, err := b.Get(ctx, "set"); err != nil || v != 3 {
				t.Errorf("b.Get(set) after a new Set = %d, %v; want 3", v, err)
			}
		})
	}
}

// TestOutboxDrainsUnderSteadyWrites: after writes failed while Redis
// refused and a replay failed too (Redis known down: writes fail at once),
// Redis answers again while writes of new keys keep coming. A write must
// succeed again soon and the outbox empty: a replay that goes through
// shows that Redis is up, even if writes added entries while it ran, so
// writes must try Redis again rather than fail at once and refill the
// outbox for as long as they come.
func TestOutboxDrainsUnderSteadyWrites(t *testing.T) {
	ctx := context.Background()
	_, p, through, _ := proxied(t)
	c := newIntCache(t, tiered.Config{Redis: through(), Namespace: redistest.Namespace(t), WriteTimeout: 100 * time.Millisecond})
	p.Refuse()
	if err := c.Set(ctx, "k", 1); !errors.Is(err, tiered.ErrL2Unavailable) {
		t.Fatalf("Set with Redis refusing: %v, want ErrL2Unavailable", err)
	}
	eventually(t, 3*time.Second, "a replay fails", func() bool { return c.Stats().OutboxReplays >= 2 })
	ok := make(chan struct{})
	stop := make(chan struct{})
	var writer sync.WaitGroup
	writer.Go(func() {
		// New keys, as a web cache's misses are, as fast as they go: the
		// outbox cannot fold them into what it holds.
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if c.Set(ctx, fmt.Sprintf("w%d", i), int64(i)) == nil {
				close(ok)
				return
			}
		}
	})
	defer func() { close(stop); writer.Wait() }()
	<-time.After(100 * time.Millisecond) // writes failing at once meanwhile
	p.Pass()
	select {
	case <-ok:
	case <-time.After(3 * time.Second):
		t.Fatalf("no write succeeded within 3 s of Redis answering; %+v", c.Stats())
	}
	eventually(t, 5*time.Second, "the outbox empties", func() bool { return c.Stats().OutboxHeld == 0 })
}

// TestWriteRidesOutAHiccup: a Set during a 300 ms stall of Redis returns
// nil once the stall ends, because it retries; with one attempt only, it
// fails.
func TestWriteRidesOutAHiccup(t *testing.T) {
	ctx := context.Background()
	_, p, through, raw := proxied(t)
	ns := redistest.Namespace(t)
	for _, tt := range []struct {
		name    string
		timeout time.Duration
		ok      bool
	}{
		{"retries", 0, true},
		{"one-attempt", -1, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newIntCache(t, tiered.Config{Redis: through(), Namespace: ns + tt.name, WriteTimeout: tt.timeout})
			tiered.SetOutboxLimit(c, 0) // each case starts with L2 trusted
			p.Stall()
			healed := make(chan struct{})
			time.AfterFunc(300*time.Millisecond, func() { p.Pass(); close(healed) })
			start := time.Now()
			err := c.Set(ctx, "k", 1)
			took := time.Since(start)
			<-healed
			if ok := err == nil; ok != tt.ok {
				t.Fatalf("Set across a 300 ms stall = %v after %v; want success %v", err, took, tt.ok)
			}
			if tt.ok && took < 300*time.Millisecond {
				t.Errorf("Set returned after %v, before the stall ended", took)
			}
			if tt.ok {
				if n := raw.Exists(ctx, ns+tt.name+":k").Val(); n != 1 {
					t.Errorf("the Set that returned nil is not in Redis")
				}
			}
		})
	}
}

// TestMutationsWithADoneContext: every mutation, handed a context that is
// already cancelled or past its deadline, makes its change (in L2, and in
// another process's L1) and returns nil. A handler that passes its
// request's context must not lose writes silently.
func TestMutationsWithADoneContext(t *testing.T) {
	rdb, ns := wbNamespace(t, redistest.Single(t))
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	source := func(context.Context, string, int64) error { return nil }
	for _, done := range []struct {
		name string
		ctx  context.Context
	}{{"cancelled", cancelled}, {"expired", expired}} {
		for _, tt := range []struct {
			name string
			// do mutates key to 2 (or removes it, gone) with ctx.
			do   func(ctx context.Context, a *tiered.Cache[int64], w *tiered.WriteBehind[int64], key string) error
			gone bool
		}{
			{"Set", func(ctx context.Context, a *tiered.Cache[int64], _ *tiered.WriteBehind[int64], k string) error {
				return a.Set(ctx, k, 2)
			}, false},
			{"Delete", func(ctx context.Context, a *tiered.Cache[int64], _ *tiered.WriteBehind[int64], k string) error {
				return a.Delete(ctx, k)
			}, true},
			{"InvalidateTags", func(ctx context.Context, a *tiered.Cache[int64], _ *tiered.WriteBehind[int64], k string) error {
				return a.InvalidateTags(ctx, "tag-"+k)
			}, true},
			{"WriteThrough", func(ctx context.Context, a *tiered.Cache[int64], _ *tiered.WriteBehind[int64], k string) error {
				return a.WriteThrough(ctx, k, 2, source)
			}, false},
			{"WriteAround", func(ctx context.Context, a *tiered.Cache[int64], _ *tiered.WriteBehind[int64], k string) error {
				return a.WriteAround(ctx, k, 2, source)
			}, true},
			{"WriteBehind.Set", func(ctx context.Context, _ *tiered.Cache[int64], w *tiered.WriteBehind[int64], k string) error {
				return w.Set(ctx, k, 2)
			}, false},
		} {
			t.Run(done.name+"/"+tt.name, func(t *testing.T) {
				bg := context.Background()
				ns := ns + ":" + done.name + ":" + tt.name
				key := "k"
				a := newIntCache(t, tiered.Config{Redis: newClient(t), Namespace: ns})
				b := newIntCache(t, tiered.Config{Redis: newClient(t), Namespace: ns})
				w := newWriteBehind(t, a, tiered.WriteBehindConfig[int64]{NoFlusher: true})
				if err := a.Set(bg, key, 1, tiered.WithTags("tag-"+key)); err != nil {
					t.Fatal(err)
				}
				if v, err := b.Get(bg, key); err != nil || v != 1 {
					t.Fatalf("b.Get before = %d, %v", v, err)
				}
				// An error would keep the promise too, but with Redis up the
				// write has no reason to fail: its Redis steps do not depend
				// on the caller's context.
				if err := tt.do(done.ctx, a, w, key); err != nil {
					t.Fatalf("%s with a %s context: %v", tt.name, done.name, err)
				}
				raw, rerr := rdb.Get(bg, ns+":"+key).Bytes()
				if tt.gone && !errors.Is(rerr, redis.Nil) {
					t.Errorf("%s returned nil, but L2 still holds the key (%q, %v)", tt.name, raw, rerr)
				}
				if !tt.gone && rerr != nil {
					t.Errorf("%s returned nil, but L2 has nothing: %v", tt.name, rerr)
				}
				// Another process: its L1 copy was evicted, and what it reads
				// now comes from L2.
				eventually(t, 5*time.Second, "b sees the write", func() bool {
					v, err := b.Get(bg, key)
					if tt.gone {
						return errors.Is(err, tiered.ErrNotFound)
					}
					return err == nil && v == 2
				})
				// A new process, which has nothing in L1, reads the same.
				c := newIntCache(t, tiered.Config{Redis: newClient(t), Namespace: ns})
				v, err := c.Get(bg, key)
				if tt.gone && !errors.Is(err, tiered.ErrNotFound) || !tt.gone && (err != nil || v != 2) {
					t.Errorf("a new process's Get after %s = %d, %v", tt.name, v, err)
				}
			})
		}
	}
}

// TestBreakerIgnoresOneStall: a stall fails every call in flight at once;
// however many they are, the breaker stays closed, because its failures
// must span two L2 timeouts. A Redis that keeps failing opens it.
func TestBreakerIgnoresOneStall(t *testing.T) {
	ctx := context.Background()
	_, p, through, _ := proxied(t)
	c := newIntCache(t, tiered.Config{Redis: through(), Namespace: redistest.Namespace(t), DisableInvalidation: true})
	p.Stall()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() { _, _ = c.Get(ctx, fmt.Sprintf("k%d", i)) })
	}
	wg.Wait()
	p.Pass()
	if s := c.Stats(); s.L2Errors < 16 || s.Breaker != "closed" {
		t.Fatalf("after one stall: %d L2 errors, breaker %s; want 16 and closed", s.L2Errors, s.Breaker)
	}
	if _, err := c.Get(ctx, "after"); !errors.Is(err, tiered.ErrNotFound) {
		t.Fatalf("Get after the stall: %v", err)
	}
	p.Refuse()
	eventually(t, 10*time.Second, "the breaker opens", func() bool {
		_, _ = c.Get(ctx, "k")
		return c.Stats().Breaker == "open"
	})
	p.Pass()
}
