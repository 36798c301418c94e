package tiered_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	gocacheredis "github.com/eko/gocache/store/redis/v4"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

// TestBusDownServesOnlyYoungCopies: with Redis gone the bus cannot prove
// that this process has every invalidation, so L1 copies older than the
// staleness bound are skipped, while younger ones are served: the database
// sees a load per key per bound, not a load per read. Once Redis is back,
// the bus turns fresh again after a flush.
func TestBusDownServesOnlyYoungCopies(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	client := libraryClient(t, "redis://"+srv.Addr+"/0")
	const bound = 200 * time.Millisecond
	// The copies' ages are on a fake clock, so that "young" stays young
	// however slowly the machine runs the reads.
	clk := newFakeClock()
	c := newCache(t, tiered.Config{Redis: client, Namespace: redistest.Namespace(t), StalenessBound: bound, L1TTL: time.Hour, Clock: clk})
	src := &countingLoader{}
	// Under load a heartbeat may come back later than the bound, and the
	// bus flushes L1 when it is fresh again: load until "old" is in L1.
	eventually(t, 5*time.Second, "bus not fresh on a live Redis", func() bool { return c.Stats().Bus.Fresh })
	eventually(t, 5*time.Second, `"old" not in L1`, func() bool {
		if _, err := c.GetOrLoad(ctx, "old", src.load); err != nil {
			t.Fatal(err)
		}
		_, _, ok := tiered.PeekL1(c, "old")
		return ok
	})

	srv.Stop()
	eventually(t, 2*bound, "bus still fresh with Redis stopped", func() bool { return !c.Stats().Bus.Fresh })
	clk.Advance(bound + time.Millisecond) // "old" is now older than the bound
	loads := src.calls.Load()
	if _, err := c.GetOrLoad(ctx, "old", src.load); err != nil {
		t.Fatal(err)
	}
	if src.calls.Load() != loads+1 || c.Stats().StaleSkips == 0 {
		t.Errorf("an L1 copy older than the bound was served with the bus down: loads %d→%d, %+v", loads, src.calls.Load(), c.Stats())
	}
	// The copy just loaded is young: served from L1, no new load.
	for range 10 {
		if _, err := c.GetOrLoad(ctx, "old", src.load); err != nil {
			t.Fatal(err)
		}
	}
	if src.calls.Load() != loads+1 {
		t.Errorf("young L1 copy not served with the bus down: %d loads, want %d", src.calls.Load(), loads+1)
	}

	flushes := c.Stats().Flushes
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "bus not fresh again after Redis came back", func() bool { return c.Stats().Bus.Fresh })
	if c.Stats().Flushes == flushes {
		t.Errorf("bus turned fresh without flushing L1")
	}
}

// TestLoadOutlivingItsLeaseIsNotWritten: a load slower than LeaseTTL still
// answers, but its value does not go to L2, where the lease has expired and
// a newer value may stand.
func TestLoadOutlivingItsLeaseIsNotWritten(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		raw := r.Client(t)
		c := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, LeaseTTL: 50 * time.Millisecond})
		v, err := c.GetOrLoad(ctx, "slow", func(ctx context.Context, key string) (product, error) {
			time.Sleep(150 * time.Millisecond)
			return product{ID: 1}, nil
		})
		if err != nil || v.ID != 1 {
			t.Fatalf("GetOrLoad = %+v, %v", v, err)
		}
		if n := raw.Exists(ctx, ns+":slow").Val(); n != 0 {
			t.Errorf("a load that outlived its lease wrote L2")
		}
		if s := c.Stats(); s.LeasesLost != 1 {
			t.Errorf("LeasesLost = %d, want 1", s.LeasesLost)
		}
	})
}

// TestWaitsForAnotherProcessLoad: a miss that finds another cache loading
// the key (its lease in L2) waits for that load's value instead of loading.
func TestWaitsForAnotherProcessLoad(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		holder := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		started, release := make(chan struct{}), make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := holder.GetOrLoad(ctx, "k", func(ctx context.Context, key string) (product, error) {
				close(started)
				<-release
				return product{ID: 1}, nil
			})
			done <- err
		}()
		<-started

		other := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		src := &countingLoader{}
		got := make(chan product, 1)
		go func() {
			v, err := other.GetOrLoad(ctx, "k", src.load)
			if err != nil {
				t.Error(err)
			}
			got <- v
		}()
		eventually(t, 2*time.Second, "the second cache never waited", func() bool { return other.Stats().LeaseWaits == 1 })
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if v := <-got; v.ID != 1 || src.calls.Load() != 0 {
			t.Errorf("waiter got %+v after %d loads of its own; want the holder's value and none", v, src.calls.Load())
		}
	})
}

func TestOptions(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		raw := r.Client(t)
		c := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, TTL: time.Hour, Jitter: -1})
		if err := c.Set(ctx, "short", product{ID: 1}, tiered.WithTTL(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if ttl := raw.PTTL(ctx, ns+":short").Val(); ttl <= 0 || ttl > time.Minute {
			t.Errorf("WithTTL(1m): L2 TTL %v", ttl)
		}
		if _, err := c.GetOrLoad(ctx, "loaded", (&countingLoader{}).load, tiered.WithTTL(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if ttl := raw.PTTL(ctx, ns+":loaded").Val(); ttl <= 0 || ttl > time.Minute {
			t.Errorf("GetOrLoad WithTTL(1m): L2 TTL %v", ttl)
		}
		for name, opt := range map[string]tiered.Option{
			"negative TTL": tiered.WithTTL(-time.Second),
			"empty tag":    tiered.WithTags(""),
			"long tag":     tiered.WithTags(strings.Repeat("t", 2000)),
		} {
			if err := c.Set(ctx, "k", product{}, opt); err == nil {
				t.Errorf("Set with %s: no error", name)
			}
		}
		if err := c.InvalidateTags(ctx, ""); err == nil {
			t.Errorf("InvalidateTags(\"\"): no error")
		}

		// A gocache Store without Config.Redis cannot index tags.
		storeOnly := newCache(t, tiered.Config{Store: gocacheredis.NewRedis(r.Client(t)), Namespace: ns + "-store"})
		if err := storeOnly.Set(ctx, "k", product{}, tiered.WithTags("t")); err == nil {
			t.Errorf("Set WithTags on a Store-only cache: no error")
		}
		if err := storeOnly.InvalidateTags(ctx, "t"); err == nil {
			t.Errorf("InvalidateTags on a Store-only cache: no error")
		}
	})
}

// TestInvalidateTagsWithoutRedisEndsTaggedCopies: with the tag set out of
// reach (Redis gone), InvalidateTags says so, and still ends this
// process's copies that carry the tag, and no others.
func TestInvalidateTagsWithoutRedisEndsTaggedCopies(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	defer client.Close()
	c := newCache(t, tiered.Config{Redis: client, Namespace: redistest.Namespace(t), WriteTimeout: 50 * time.Millisecond})
	if err := c.Set(ctx, "k", product{ID: 1}, tiered.WithTags("t")); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "other", product{ID: 2}, tiered.WithTags("u")); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if err := c.InvalidateTags(ctx, "t"); !errors.Is(err, tiered.ErrL2Unavailable) {
		t.Fatalf("InvalidateTags with Redis down error = %v, want ErrL2Unavailable", err)
	}
	if v, err := c.Get(ctx, "k"); !errors.Is(err, tiered.ErrNotFound) {
		t.Errorf("Get(k) after InvalidateTags(t) = %+v, %v; want a miss", v, err)
	}
	if v, err := c.Get(ctx, "other"); err != nil || v.ID != 2 {
		t.Errorf("Get(other) after InvalidateTags(t) = %+v, %v; want its L1 copy (no flush)", v, err)
	}
	if s := c.Stats(); s.Flushes != 1 || s.OutboxHeld != 1 || s.FailedWrites != 1 {
		t.Errorf("Stats = %+v, want only the first flush, the tag held in the outbox, one failed write", s)
	}
}

// TestL1OnlyInvalidateTags: without L2, InvalidateTags ends the copies
// that carry the tags, and keeps the others.
func TestL1OnlyInvalidateTags(t *testing.T) {
	ctx := context.Background()
	c := newCache(t, tiered.Config{})
	src := &countingLoader{}
	if _, err := c.GetOrLoad(ctx, "a", src.load, tiered.WithTags("t")); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "b", product{ID: 2}, tiered.WithTags("t", "u")); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "c", product{ID: 3}, tiered.WithTags("u")); err != nil {
		t.Fatal(err)
	}
	if err := c.InvalidateTags(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b"} {
		if _, err := c.Get(ctx, k); !errors.Is(err, tiered.ErrNotFound) {
			t.Errorf("Get(%s) after InvalidateTags(t) error = %v, want ErrNotFound", k, err)
		}
	}
	if v, err := c.Get(ctx, "c"); err != nil || v.ID != 3 {
		t.Errorf("Get(c) = %+v, %v; want it kept", v, err)
	}
	// A load after the invalidation fills again, and is served.
	if _, err := c.GetOrLoad(ctx, "a", src.load, tiered.WithTags("t")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "a"); err != nil {
		t.Errorf("Get(a) after its reload error = %v", err)
	}
}

// TestFailedLoadReleasesItsLease: a load that fails gives its lease back,
// so that the next miss, here or in another process, can fill L2 at once.
func TestFailedLoadReleasesItsLease(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		raw := r.Client(t)
		c := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		if _, err := c.GetOrLoad(ctx, "k", func(context.Context, string) (product, error) {
			return product{}, errors.New("database down")
		}); err == nil {
			t.Fatal("GetOrLoad with a failing loader: no error")
		}
		if n := raw.Exists(ctx, ns+":k").Val(); n != 0 {
			t.Fatalf("the failed load left its lease in L2")
		}
		other := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		if _, err := other.GetOrLoad(ctx, "k", (&countingLoader{}).load); err != nil {
			t.Fatal(err)
		}
		if n := raw.Exists(ctx, ns+":k").Val(); n != 1 {
			t.Errorf("the next load did not fill L2")
		}
	})
}

func TestTaggedKeys(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		c := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: redistest.Namespace(t)})
		for _, k := range []string{"a", "b"} {
			if err := c.Set(ctx, k, product{}, tiered.WithTags("t")); err != nil {
				t.Fatal(err)
			}
		}
		keys, err := c.TaggedKeys(ctx, "t")
		slices.Sort(keys)
		if err != nil || !slices.Equal(keys, []string{"a", "b"}) {
			t.Errorf("TaggedKeys(t) = %v, %v; want [a b]", keys, err)
		}
		if _, err := newCache(t, tiered.Config{}).TaggedKeys(ctx, "t"); !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("TaggedKeys on an L1-only cache: %v, want ErrUnsupported", err)
		}
	})
}

// TestHotKeys: the keys read most reach Redis's hot-key set, most read
// first, and the least read do not.
func TestHotKeys(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		raw := r.Client(t)
		t.Cleanup(func() { raw.Del(context.Background(), ns+"#hot") })
		c := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, HotKeys: 3, HotKeysInterval: 50 * time.Millisecond})
		for _, k := range []string{"a", "b", "c", "d", "e"} {
			if err := c.Set(ctx, k, product{}); err != nil {
				t.Fatal(err)
			}
		}
		// a ≫ b ≫ c, then d and e a little.
		for i := range 40_000 {
			k := "a"
			switch {
			case i%10 == 9:
				k = "d"
			case i%10 == 8:
				k = "e"
			case i%4 == 1:
				k = "b"
			case i%8 == 3:
				k = "c"
			}
			if _, err := c.Get(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if got, _ = c.HotKeys(ctx, 2); len(got) == 2 {
				break
			}
		}
		if !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("HotKeys(2) = %v, want [a b]", got)
		}
	})
}

// TestTagInvalidationReachesCopiesRedisForgot: B holds a copy filled with a
// tag that Redis no longer lists (its tag set and the value gone, as after
// a restart of Redis that B's subscription survived, or an eviction); A's
// InvalidateTags finds nothing in Redis, yet B's copy goes, because the tag
// itself travels on the bus.
func TestTagInvalidationReachesCopiesRedisForgot(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		raw := r.Client(t)
		ns := redistest.Namespace(t)
		a := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		b := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		src := &countingLoader{}
		if _, err := b.GetOrLoad(ctx, "k", src.load, tiered.WithTags("t")); err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{ns + ":k", ns + "#tag:t"} { // two slots on a cluster
			if err := raw.Del(ctx, key).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := b.Get(ctx, "k"); err != nil {
			t.Fatalf("b's copy before the purge: %v", err)
		}
		if err := a.InvalidateTags(ctx, "t"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "b's copy goes", func() bool {
			_, err := b.Get(ctx, "k")
			return errors.Is(err, tiered.ErrNotFound)
		})
		if s := b.Stats(); s.Bus.ReceivedTags != 1 || s.Flushes != 1 {
			t.Errorf("b's Stats = %+v, want the tag received and no flush but the first", s)
		}
	})
}
