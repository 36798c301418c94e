package l1

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/clock"
)

// Config is what these tests need of the facade's Config.
type Config struct {
	L1MaxBytes int64
	TTL, L1TTL time.Duration
}

// testCache drives a Cache of ints as the facade does: values cost their
// envelope's size, reads count hits and misses for the window's climber,
// and loads and writes wait for their value to land.
type testCache struct {
	*Cache[int]
	ttl          time.Duration
	hits, misses atomic.Int64
}

var errNotFound = errors.New("not found")

// newL1TestCache returns a testCache that t closes.
func newL1TestCache(t *testing.T, cfg Config) *testCache {
	t.Helper()
	if cfg.L1MaxBytes == 0 {
		cfg.L1MaxBytes = 64 << 20
	}
	c := &testCache{ttl: time.Minute}
	if cfg.L1TTL != 0 {
		c.ttl = cfg.L1TTL
	}
	var err error
	c.Cache, err = New[int](cfg.L1MaxBytes, &clock.Coarse{}, func() (int64, int64) { return c.hits.Load(), c.misses.Load() })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func (c *testCache) Set(_ context.Context, key string, v int) error {
	c.Cache.Set(key, &Entry[int]{Value: v, Cost: EntryCost(key, 16+len(strconv.Itoa(v)))}, c.ttl)
	return nil
}

func (c *testCache) Get(_ context.Context, key string) (int, error) {
	e, ok := c.Cache.Get(key)
	if !ok {
		c.misses.Add(1)
		return 0, errNotFound
	}
	c.hits.Add(1)
	return e.Value, nil
}

func (c *testCache) GetOrLoad(ctx context.Context, key string, load func(context.Context, string) (int, error)) (int, error) {
	if v, err := c.Get(ctx, key); err == nil {
		return v, nil
	}
	v, err := load(ctx, key)
	if err != nil {
		return 0, err
	}
	return v, c.Set(ctx, key, v)
}

func (c *testCache) Delete(_ context.Context, keys ...string) error {
	for _, k := range keys {
		c.Cache.Delete(k)
	}
	return nil
}

// testStats has the names of the facade's Stats.
type testStats struct{ L1Items, L1Bytes, L1WindowBytes, L1Hits, L1Misses int64 }

func (c *testCache) Stats() testStats {
	s := c.Cache.Stats()
	return testStats{s.Items, s.Bytes, s.WindowBytes, c.hits.Load(), c.misses.Load()}
}

// TestL1ReadYourWriteAcrossTheWindow: values are written into a window
// of two entries, so that other writers' values soon push them into
// ristretto, and overwritten; every Get after a Set returns must see that
// Set's value, whichever of the two places held the older one or holds the
// new one. Without the Del that every write queues ahead of its value, the
// older value stays in ristretto, which reads look at first; without the
// offered values that the window keeps readable until ristretto has them,
// a Get finds neither copy when other writers pushed the value out of the
// window meanwhile.
func TestL1ReadYourWriteAcrossTheWindow(t *testing.T) {
	c := newL1TestCache(t, Config{L1MaxBytes: 200 * (EntryOverhead + 100)}) // room for every key: the test is about order, not eviction
	ctx := context.Background()
	const writers, keysEach, rounds = 4, 50, 2000
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = c.Get(ctx, fmt.Sprintf("w%d-%d", rng.IntN(writers), rng.IntN(keysEach)))
			}
		})
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range rounds {
				k := fmt.Sprintf("w%d-%d", w, i%keysEach)
				if err := c.Set(ctx, k, i); err != nil {
					t.Error(err)
					return
				}
				for range 3 {
					if v, err := c.Get(ctx, k); err != nil || v != i {
						t.Errorf("Get(%s) = %d, %v after Set(%d)", k, v, err, i)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()
}

// TestL1WindowEvictsIntoRistretto: new values enter the window; those it
// evicts are offered to ristretto, which admits them while it has room.
func TestL1WindowEvictsIntoRistretto(t *testing.T) {
	c := newL1TestCache(t, Config{L1MaxBytes: 1000 * (EntryOverhead + 64)})
	ctx := context.Background()
	if err := c.Set(ctx, "k", 1); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.r.Get("k"); ok {
		t.Fatal("a new value went straight to ristretto, not to the window")
	}
	for i := range 100 { // more than the window's 1 %
		if err := c.Set(ctx, fmt.Sprint(i), i); err != nil {
			t.Fatal(err)
		}
	}
	c.Wait()
	if _, ok := c.r.Get("k"); !ok {
		t.Fatal("a value the window evicted is not in ristretto")
	}
	if _, ok := c.win.lookup("k"); ok {
		t.Fatal("a value moved to ristretto is still in the window")
	}
	if v, err := c.Get(ctx, "k"); err != nil || v != 1 {
		t.Fatalf("Get = %d, %v; want 1", v, err)
	}
}

// TestL1Accounting: items and bytes follow values in and out of both
// places, and L1 keeps to its budget.
func TestL1Accounting(t *testing.T) {
	const budget = 100 * (EntryOverhead + 64)
	c := newL1TestCache(t, Config{L1MaxBytes: budget})
	ctx := context.Background()
	var keys []string
	for i := range 1000 {
		k := fmt.Sprintf("key-%d", i)
		keys = append(keys, k)
		_, _ = c.GetOrLoad(ctx, k, func(context.Context, string) (int, error) { return i, nil })
		_, _ = c.Get(ctx, keys[i/2]) // reads promote some
	}
	c.Wait()
	s := c.Stats()
	if s.L1Items == 0 || s.L1Bytes > budget {
		t.Errorf("after 1000 loads: %d items, %d bytes; want some, within %d", s.L1Items, s.L1Bytes, budget)
	}
	if err := c.Delete(ctx, keys...); err != nil {
		t.Fatal(err)
	}
	c.Wait()
	if s := c.Stats(); s.L1Items != 0 || s.L1Bytes != 0 {
		t.Errorf("after deleting every key: %d items, %d bytes; want 0, 0", s.L1Items, s.L1Bytes)
	}
}

// TestWindowClimbs: at the end of each sample the window moves a step
// toward the side that more of the sample's misses would have hit: to its
// cap when they were on keys the gate refused, to nothing when they were
// on keys it deleted from ristretto, nowhere when the two are even.
func TestWindowClimbs(t *testing.T) {
	for _, tc := range []struct {
		name             string
		refused, dropped int // misses per sample on such keys
		want             float64
	}{
		{"recency", 3, 1, 0.95},
		{"frequency", 1, 3, 0},
		{"neither", 0, 0, windowInitialShare},
		{"even", 2, 2, windowInitialShare},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests int64
			var w window[int]
			w.init(1_000_000, 4000)
			w.sampleSizeMin = 0
			w.warm = true
			kh := uint64(0)
			for range 100 { // samples; the cap is 30 steps away
				for range tc.refused {
					kh++
					w.refused.add(kh)
					w.missed(kh)
				}
				for range tc.dropped {
					kh++
					w.dropped.add(kh)
					w.missed(kh)
				}
				w.missed(kh + 1) // on a key neither remembers
				requests += 1000
				w.climb(requests, 0, 0)
			}
			if got := float64(w.max) / float64(w.total); got < tc.want-0.01 || got > tc.want+0.01 {
				t.Errorf("window share = %.3f, want %.3f", got, tc.want)
			}
		})
	}
}

// TestGhostForgetsTheOldest: a ghost remembers the last n keys added,
// counting a key added twice until both are gone.
func TestGhostForgetsTheOldest(t *testing.T) {
	var g ghost
	g.init(3)
	for _, kh := range []uint64{1, 2, 1, 3} {
		g.add(kh)
	}
	// The ring holds 3, 2, 1 (the first 1 was overwritten by 3).
	for kh, want := range map[uint64]bool{1: true, 2: true, 3: true, 4: false} {
		if g.has(kh) != want {
			t.Errorf("has(%d) = %v after 1, 2, 1, 3; want %v", kh, !want, want)
		}
	}
	g.add(4) // overwrites 2
	if g.has(2) || !g.has(1) {
		t.Errorf("after 1, 2, 1, 3, 4: has(2) = %v, has(1) = %v; want false, true", g.has(2), g.has(1))
	}
	g.add(5) // overwrites the second 1
	if g.has(1) || len(g.in) != 3 {
		t.Errorf("after 1, 2, 1, 3, 4, 5: has(1) = %v with %d keys counted; want false, 3", g.has(1), len(g.in))
	}
}

// TestL1WindowAdapts: on traffic where only recent keys are read again (a
// moving range of keys), the window's share must grow from its 1 % start,
// because TinyLFU refuses the new keys that the reads go to; Stats reports it.
func TestL1WindowAdapts(t *testing.T) {
	const entries = 500
	c := newL1TestCache(t, Config{L1MaxBytes: entries * (EntryOverhead + 16)})
	ctx := context.Background()
	start := c.Stats().L1WindowBytes
	rng := rand.New(rand.NewPCG(1, 2))
	load := func(context.Context, string) (int, error) { return 0, nil }
	for i := range 100_000 {
		k := fmt.Sprintf("%08d", i/4+rng.IntN(2*entries)) // the range moves on by one key every four reads
		if _, err := c.GetOrLoad(ctx, k, load); err != nil {
			t.Fatal(err)
		}
	}
	s := c.Stats()
	// Without -race it reaches its cap; under -race, which drops some of
	// ristretto's records of reads, it grows less.
	if s.L1WindowBytes < 4*start {
		t.Errorf("window after recency-heavy traffic: %d bytes, from %d; want it grown fourfold", s.L1WindowBytes, start)
	}
	t.Logf("window %d → %d bytes of %d; hit ratio %.1f %%", start, s.L1WindowBytes, int64(entries*(EntryOverhead+16)),
		100*float64(s.L1Hits)/float64(s.L1Hits+s.L1Misses))
}

// TestL1DeleteBeatsAQueuedValue: a value that the window has passed on to
// ristretto, still in ristretto's queue when its key is deleted, must not
// be readable after the delete returns, even when ristretto stores it
// before the Del queued after it.
func TestL1DeleteBeatsAQueuedValue(t *testing.T) {
	c, err := New[int](1<<20, &clock.Coarse{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stop := make(chan struct{})
	var busy sync.WaitGroup
	for g := range 3 { // other writers keep ristretto's queue busy
		busy.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c.Fill(fmt.Sprintf("busy%d-%d", g, i), &Entry[int]{Cost: 300}, 0)
			}
		})
	}
	defer func() { close(stop); busy.Wait() }()
	for trial := range 2000 {
		k := fmt.Sprintf("k%d", trial)
		old := &Entry[int]{Value: trial, Cost: 300}
		c.Set(k, old, 0)
		for i := 0; ; i++ { // push it out of the window
			if n, ok := c.win.lookup(k); !ok || n.offered.Load() {
				break
			}
			c.Fill(fmt.Sprintf("push%d-%d", trial, i), &Entry[int]{Cost: 300}, 0)
		}
		c.Delete(k)
		for range 2000 {
			if e, ok := c.Get(k); ok && e == old {
				t.Fatalf("trial %d: the deleted value is readable after del returned", trial)
			}
		}
	}
}

// TestL1HugeTTL: a TTL that overflows the window's deadline means no
// expiry, not an expired value.
func TestL1HugeTTL(t *testing.T) {
	c := newL1TestCache(t, Config{TTL: math.MaxInt64, L1TTL: math.MaxInt64})
	ctx := context.Background()
	if err := c.Set(ctx, "k", 1); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "k"); err != nil || v != 1 {
		t.Fatalf("Get = %d, %v; want 1", v, err)
	}
}

// TestL1GateHoldsALoop: traffic that cycles through half again as many
// keys as L1 holds is the worst case for LRU (no hits at all) and for a
// cache that lets every new key in. The admission gate must keep what L1
// holds and refuse the keys that would only replace it, so that about
// two reads in three hit. Without the gate ristretto's own admission
// lets ties in and churns.
func TestL1GateHoldsALoop(t *testing.T) {
	const entries = 1000
	c := newL1TestCache(t, Config{L1MaxBytes: entries * (EntryOverhead + 40)})
	ctx := context.Background()
	load := func(context.Context, string) (int, error) { return 1, nil }
	keys := make([]string, entries*3/2)
	for i := range keys {
		keys[i] = fmt.Sprintf("loop-%06d", i)
	}
	for range 30 {
		for _, k := range keys {
			if _, err := c.GetOrLoad(ctx, k, load); err != nil {
				t.Fatal(err)
			}
		}
	}
	s := c.Stats()
	ratio := 100 * float64(s.L1Hits) / float64(s.L1Hits+s.L1Misses)
	t.Logf("hit ratio %.1f %% over 30 cycles of %d keys through %d entries (%d held)", ratio, len(keys), entries, s.L1Items)
	if ratio < 60 {
		t.Errorf("hit ratio %.1f %%; want at least 60 %% (at most 66.7 %%)", ratio)
	}
}

// fullL1 returns an L1 with room for entries values of cost bytes, after
// twice as many fills, with ristretto full; and the keys it filled.
func fullL1(t *testing.T, entries, cost int64) (*Cache[int], []string) {
	t.Helper()
	c, err := New[int](entries*cost, &clock.Coarse{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var keys []string
	for i := range 2 * entries {
		k := fmt.Sprintf("r%04d", i)
		keys = append(keys, k)
		c.Fill(k, &Entry[int]{Cost: cost}, 0)
	}
	c.Wait()
	if over := c.over(cost); over <= 0 {
		t.Fatalf("ristretto has room for %d more bytes after %d fills; the test needs it full", cost-over, 2*entries)
	}
	return c, keys
}

// TestL1GateAdmitsByFrequency: with ristretto full of values read five
// times each, the gate refuses a value never read and admits one read
// more often than they were.
func TestL1GateAdmitsByFrequency(t *testing.T) {
	const entries, cost = 200, EntryOverhead + 16
	c, keys := fullL1(t, entries, cost)
	for _, k := range keys {
		for range 5 {
			c.Get(k)
		}
	}
	cold := &Entry[int]{Cost: cost, kh: c.sk.hash("cold")}
	hot := &Entry[int]{Cost: cost, kh: c.sk.hash("hot")}
	c.sk.add(hot.kh, 10)
	c.mu.Lock()
	coldIn, hotIn := c.admit(cold), c.admit(hot)
	c.mu.Unlock()
	if coldIn {
		t.Error("the gate admitted a value never read in place of values read five times")
	}
	if !hotIn {
		t.Error("the gate refused a value read ten times in place of values read five times")
	}
}

// TestL1GateSamplesEveryResident: the gate draws its victims from every
// value ristretto holds, each as likely as the others. A resident it
// could not draw would never be its victim: with the table indexed by key
// hash that the gate used before, values that shared a slot were hidden,
// and L1 scored a point less on the loop trace.
func TestL1GateSamplesEveryResident(t *testing.T) {
	const n = 1000
	c, err := New[int](4*n*EntryOverhead, &clock.Coarse{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seen := make(map[*Entry[int]]bool, n)
	c.mu.Lock()
	for i := range n {
		k := fmt.Sprintf("r%04d", i)
		e := &Entry[int]{Cost: EntryOverhead, kh: c.sk.hash(k), key: k}
		if !c.add(k, e, 0) {
			c.mu.Unlock()
			t.Fatalf("ristretto dropped value %d", i)
		}
		seen[e] = false
	}
	c.mu.Unlock()
	c.Wait()
	c.mu.Lock()
	// All are read alike, so a draw returns its first sample: 40 draws
	// per resident miss one with a chance of e^-40.
	for range 40 * n {
		if v, _ := c.victim(c.now.Load()); v != nil {
			seen[v] = true
		}
	}
	c.mu.Unlock()
	missed := 0
	for _, ok := range seen {
		if !ok {
			missed++
		}
	}
	if missed > 0 || len(seen) != n {
		t.Errorf("the gate never drew %d of %d residents (%d values drawn in all)", missed, n, len(seen))
	}
}

// TestL1GateDeletesItsVictim: when the gate lets a value into a full
// ristretto, it deletes the resident it compared the value with, and
// ristretto evicts nothing of its own choosing: its sketch cannot tell
// apart values read more than 15 times, and it would evict a hot one as
// readily as a lukewarm one.
func TestL1GateDeletesItsVictim(t *testing.T) {
	const entries, cost, admitted = 200, EntryOverhead + 16, 20
	c, _ := fullL1(t, entries, cost)
	c.res.mu.Lock()
	before := slices.Clone(c.res.es)
	c.res.mu.Unlock()
	for _, e := range before {
		for range 3 {
			c.Get(e.key)
		}
	}
	c.mu.Lock()
	for i := range admitted {
		k := fmt.Sprintf("hot%02d", i)
		e := &Entry[int]{Cost: cost, kh: c.sk.hash(k), key: k}
		c.sk.add(e.kh, 15)
		if !c.admit(e) || !c.add(k, e, 0) {
			c.mu.Unlock()
			t.Fatalf("the gate refused %s, read 15 times, or ristretto dropped it", k)
		}
	}
	c.mu.Unlock()
	c.Wait()
	left, chosen := 0, 0
	for _, e := range before {
		gone := e.state.Load() == entryGone
		if gone {
			left++
		}
		if e.dead.Load() {
			chosen++
		}
		if gone != e.dead.Load() {
			t.Errorf("%s: left ristretto %v, chosen by the gate %v", e.key, gone, e.dead.Load())
		}
	}
	if chosen != admitted {
		t.Errorf("the gate chose %d victims for %d values; want one each", chosen, admitted)
	}
	t.Logf("%d residents, %d left", len(before), left)
}

// TestL1ExitClearsResidentAndFolds: when ristretto lets go of a value that
// readers are still reading, onExit takes it out of the gate's sample of
// residents and returns its reads to the sketch, so that they count if the
// key comes back. Run it with -race: the readers count reads in the entry
// while onExit reads them on ristretto's goroutine.
func TestL1ExitClearsResidentAndFolds(t *testing.T) {
	c, err := New[int](1<<20, &clock.Coarse{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	e := &Entry[int]{Cost: EntryOverhead}
	c.mu.Lock()
	e.kh = c.sk.hash("k")
	ok := c.add("k", e, 0) // straight into ristretto, as the window's evictions go
	c.mu.Unlock()
	if !ok {
		t.Fatal("ristretto dropped the value")
	}
	c.Wait()
	resident := func() bool {
		c.res.mu.Lock()
		defer c.res.mu.Unlock()
		return int(e.at) < len(c.res.es) && c.res.es[e.at] == e
	}
	if !resident() {
		t.Fatal("a value ristretto stores is not in the gate's sample")
	}
	for range 8 {
		if _, ok := c.Get("k"); !ok {
			t.Fatal("miss on a stored value")
		}
	}
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for range 1000 {
				c.Get("k")
			}
		})
	}
	c.Delete("k")
	readers.Wait()
	c.Wait()
	if resident() {
		t.Error("a value ristretto let go of is still in the gate's sample")
	}
	if got := c.sk.estimate(e.kh); got < 8 {
		t.Errorf("sketch estimate after 8 reads and the exit = %d; want at least 8", got)
	}
}
