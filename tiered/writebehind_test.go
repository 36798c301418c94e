package tiered_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// memSource is an in-memory source of truth for write-behind tests: it
// keeps each key's value and the IDs of the writes applied to it, in the
// order they were applied, and fails while down is set or for keys in
// poison.
type memSource struct {
	mu      sync.Mutex
	vals    map[string]int64
	applied map[string][]string
	calls   atomic.Int64
	down    atomic.Bool
	poison  map[string]bool
	delay   time.Duration
}

func newMemSource() *memSource {
	return &memSource{vals: map[string]int64{}, applied: map[string][]string{}, poison: map[string]bool{}}
}

func (s *memSource) flush(ctx context.Context, ws []tiered.PendingWrite[int64]) error {
	s.calls.Add(1)
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	if s.down.Load() {
		return errors.New("source down")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range ws {
		if s.poison[w.Key] {
			return fmt.Errorf("source refuses %q", w.Key)
		}
	}
	for _, w := range ws {
		s.vals[w.Key] = w.Value
		s.applied[w.Key] = append(s.applied[w.Key], w.ID)
	}
	return nil
}

func (s *memSource) get(key string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vals[key]
	return v, ok
}

// newWriteBehind returns a WriteBehind over c that the test closes (with
// a short deadline: a test that wants everything flushed closes it
// itself), and removes the namespace's streams when the test ends.
func newWriteBehind(t *testing.T, c *tiered.Cache[int64], cfg tiered.WriteBehindConfig[int64]) *tiered.WriteBehind[int64] {
	t.Helper()
	w, err := tiered.NewWriteBehind(c, cfg)
	if err != nil {
		t.Fatalf("NewWriteBehind: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		w.Close(ctx)
	})
	return w
}

// wbNamespace returns a client of r and a namespace of t's own, whose
// write-behind keys are deleted when t ends (on the shared single Redis;
// the cluster is the test binary's own).
func wbNamespace(t *testing.T, r redistest.Target) (redis.UniversalClient, string) {
	rdb, ns := r.Client(t), redistest.Namespace(t)
	t.Cleanup(func() {
		if r.Cluster() {
			return
		}
		ctx := context.Background()
		for _, pattern := range []string{"{" + ns + "#wb:*", ns + "#wb:*"} {
			iter := rdb.Scan(ctx, 0, pattern, 100).Iterator()
			for iter.Next(ctx) {
				rdb.Del(ctx, iter.Val())
			}
		}
	})
	return rdb, ns
}

// fastWB is a WriteBehindConfig for tests: short waits everywhere.
func fastWB(flush tiered.FlushFunc[int64]) tiered.WriteBehindConfig[int64] {
	return tiered.WriteBehindConfig[int64]{
		Flush: flush, Shards: 4, PollInterval: 5 * time.Millisecond,
		RetryBackoff: 5 * time.Millisecond, MaxRetryBackoff: 50 * time.Millisecond,
		FlushTimeout: 300 * time.Millisecond, LockTTL: time.Second,
	}
}

func TestWriteBehindFlushesEveryKeyInOrder(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		// Two processes' worth of flushers on one namespace, a source that
		// fails one call in five, writers racing on 20 keys: the source must
		// end with every key's last write, and never apply an older write of
		// a key after a newer one. Without the shard locks, both flushers read
		// every shard, and writes of one key are applied out of order.
		if n, wrong := flushInOrder(t, r, tiered.NewWriteBehind[int64]); n != 0 || wrong != 0 {
			t.Errorf("%d writes applied after a newer write of their key; %d keys end with another value than their last", n, wrong)
		}
		n, _ := flushInOrder(t, r, tiered.NewWriteBehindUnlocked[int64])
		t.Logf("without the shard locks: %d writes applied out of order", n)
		if n == 0 {
			t.Errorf("without the shard locks no write was applied out of order: the test shows nothing")
		}
	})
}

// flushInOrder runs the test above with newWB and returns how many writes
// the source applied after a newer write of their key, and how many keys
// it holds another value for than their last write.
func flushInOrder(t *testing.T, r redistest.Target, newWB func(*tiered.Cache[int64], tiered.WriteBehindConfig[int64]) (*tiered.WriteBehind[int64], error)) (reordered, wrong int) {
	t.Helper()
	ctx := context.Background()
	rdb, ns := wbNamespace(t, r)
	src := newMemSource()
	var n atomic.Int64
	flaky := func(ctx context.Context, ws []tiered.PendingWrite[int64]) error {
		if n.Add(1)%5 == 0 {
			return errors.New("flaky source")
		}
		return src.flush(ctx, ws)
	}
	var ws []*tiered.WriteBehind[int64]
	for range 2 {
		// Generous L2 timeouts: 20 writers and two flushers under -race on
		// two cores; this test is about order, not about the breaker.
		c := newTestCache[int64](t, tiered.Config{Redis: rdb, Namespace: ns, L2Timeout: time.Second, BreakerFailures: 1000})
		cfg := fastWB(flaky)
		cfg.BatchSize = 16
		w, err := newWB(c, cfg)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	const keys, writes = 20, 50
	var wg sync.WaitGroup
	for k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; i <= writes; i++ {
				if err := ws[(k+i)%2].Set(ctx, "k"+strconv.Itoa(k), int64(i)); err != nil {
					t.Errorf("Set: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, w := range ws {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := w.Close(cctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		cancel()
	}
	var flushed int64
	for _, w := range ws {
		flushed += w.Stats().Flushed
	}
	if flushed < keys*writes {
		t.Errorf("flushed %d writes, want %d", flushed, keys*writes)
	}
	for k := range keys {
		key := "k" + strconv.Itoa(k)
		if v, _ := src.get(key); v != writes {
			wrong++
		}
		ids := src.applied[key]
		for i := 1; i < len(ids); i++ {
			if !idLess(ids[i-1], ids[i]) {
				reordered++
			}
		}
	}
	if n.Load() < 5 {
		t.Errorf("the source failed no call (%d calls)", n.Load())
	}
	return reordered, wrong
}

// idLess compares stream entry IDs.
func idLess(a, b string) bool {
	am, as, _ := strings.Cut(a, "-")
	bm, bs, _ := strings.Cut(b, "-")
	x, _ := strconv.ParseUint(am, 10, 64)
	y, _ := strconv.ParseUint(bm, 10, 64)
	if x != y {
		return x < y
	}
	x, _ = strconv.ParseUint(as, 10, 64)
	y, _ = strconv.ParseUint(bs, 10, 64)
	return x < y
}

func TestWriteBehindReadsSeeThePendingValue(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		rdb, ns := wbNamespace(t, r)
		src := newMemSource()
		src.down.Store(true)
		writer := newTestCache[int64](t, tiered.Config{Redis: rdb, Namespace: ns, TTL: time.Minute})
		reader := newTestCache[int64](t, tiered.Config{Redis: rdb, Namespace: ns})
		load := func(ctx context.Context, key string) (int64, error) { return 1, nil } // the source's old value

		if v, _ := reader.GetOrLoad(ctx, "k", load); v != 1 {
			t.Fatalf("first read = %d", v)
		}
		w := newWriteBehind(t, writer, fastWB(src.flush))
		if err := w.Set(ctx, "k", 2); err != nil {
			t.Fatalf("Set: %v", err)
		}
		if v, err := writer.Get(ctx, "k"); err != nil || v != 2 {
			t.Fatalf("writer's read while pending = %d, %v; want 2", v, err)
		}
		// The reader's L1 copy is invalidated asynchronously, well within the
		// staleness bound.
		eventually(t, time.Second, "the reader sees the pending value", func() bool {
			v, err := reader.GetOrLoad(ctx, "k", load)
			return err == nil && v == 2
		})
		// Pending in L2 with no TTL: nothing may drop it before the flush.
		if ttl := rdb.PTTL(ctx, ns+":k").Val(); ttl != -1 {
			t.Fatalf("pending value's PTTL = %v, want none", ttl)
		}
		time.Sleep(100 * time.Millisecond) // the source still down: retried, kept
		if v, err := reader.GetOrLoad(ctx, "k", load); err != nil || v != 2 {
			t.Fatalf("read while retrying = %d, %v; want 2", v, err)
		}
		src.down.Store(false)
		eventually(t, 5*time.Second, "flush", func() bool { v, _ := src.get("k"); return v == 2 })
		eventually(t, 2*time.Second, "TTL restored", func() bool {
			ttl := rdb.PTTL(ctx, ns+":k").Val()
			return ttl > 30*time.Second && ttl <= time.Minute
		})
		if v, err := reader.Get(ctx, "k"); err != nil || v != 2 {
			t.Fatalf("read after flush = %d, %v; want 2", v, err)
		}
		eventually(t, time.Second, "flushed counted", func() bool { return w.Stats().Flushed == 1 })
		if s := w.Stats(); s.Appended != 1 || s.Retried == 0 || s.FlushErrors == 0 {
			t.Errorf("stats = %+v, want 1 appended, 1 flushed, retries", s)
		}
	})
}

func TestWriteBehindPoisonGoesToDeadLetters(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		rdb, ns := wbNamespace(t, r)
		src := newMemSource()
		src.poison["bad"] = true
		c := newTestCache[int64](t, tiered.Config{Redis: rdb, Namespace: ns})
		cfg := fastWB(src.flush)
		cfg.Shards, cfg.MaxAttempts = 1, 3 // one shard: "bad" shares batches with the others
		w := newWriteBehind(t, c, cfg)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // other keys keep the source busy, as live traffic does
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				_ = w.Set(ctx, "good"+strconv.Itoa(i%10), int64(i))
			}
		}()
		if err := w.Set(ctx, "bad", 7); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "dead letter", func() bool { return w.Stats().DeadLettered == 1 })
		close(stop)
		wg.Wait()
		msgs := rdb.XRange(ctx, ns+"#wb:dead", "-", "+").Val()
		if len(msgs) != 1 || msgs[0].Values["k"] != "bad" || msgs[0].Values["v"] != "7" || msgs[0].Values["attempts"] != "3" {
			t.Fatalf("dead letters = %v", msgs)
		}
		// The cache no longer claims a value the source never got.
		if _, err := c.Get(ctx, "bad"); !errors.Is(err, tiered.ErrNotFound) {
			t.Errorf("Get(bad) after dead-letter: %v, want ErrNotFound", err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := w.Close(cctx); err != nil {
			t.Fatal(err)
		}
		if v, ok := src.get("good1"); !ok || v == 0 {
			t.Errorf("good writes were held back by the poison one")
		}
	})
}

func TestWriteBehindSourceOutage(t *testing.T) {
	// The source refuses every write while writes go on: none is lost or
	// dead-lettered, the lag rises and then drains.
	//
	// The phases end on conditions, not on the clock: the outage lasts
	// until the lag has passed 3 s, the queue_length metric has shown 100
	// writes and the flushers have failed 20 times, however long a loaded
	// machine takes to get there (on a fixed schedule, a slow machine
	// appended too few writes in the outage, or too few failed flushes
	// came for dead letters to be possible). The waits' deadlines are
	// only there to end a test whose mechanism is broken. The cache's
	// Redis timeouts are generous, so that Set does not fail on a slow
	// round trip: Redis is healthy here, only the source is down.
	ctx := context.Background()
	rdb, ns := wbNamespace(t, redistest.Single(t))
	src := newMemSource()
	reader := sdkmetric.NewManualReader()
	c := newTestCache[int64](t, tiered.Config{Redis: rdb, Namespace: ns, L2Timeout: 2 * time.Second, WriteTimeout: 10 * time.Second,
		MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	cfg := fastWB(src.flush)
	cfg.MaxAttempts, cfg.MaxRetryBackoff = 2, 200*time.Millisecond
	w := newWriteBehind(t, c, cfg)

	last := map[string]int64{}
	i := 0
	set := func() {
		t.Helper()
		key := "k" + strconv.Itoa(i%50)
		if err := w.Set(ctx, key, int64(i)); err != nil {
			t.Fatalf("Set %d (source down: %v): %v", i, src.down.Load(), err)
		}
		last[key] = int64(i)
		i++
		time.Sleep(10 * time.Millisecond)
	}

	// Before the outage: the source takes writes (so the flushers have
	// seen it accept some, which an attempt must count against).
	for range 50 {
		set()
	}
	eventually(t, time.Minute, "no write flushed before the outage", func() bool { return w.Stats().Flushed > 0 })

	src.down.Store(true)
	outage := time.Now()
	failedBefore := w.Stats().FlushErrors
	var maxLag time.Duration
	var queued, failed int64
	for deadline := time.Now().Add(time.Minute); maxLag < 3*time.Second || queued < 100 || failed < 20; {
		if time.Now().After(deadline) {
			t.Fatalf("after %v of outage: max lag %v, queue_length metric at most %d, %d failed flushes; want the lag past 3 s, 100 queued, 20 failed",
				time.Since(outage).Round(time.Millisecond), maxLag, queued, failed)
		}
		set()
		s := w.Stats()
		maxLag, failed = max(maxLag, s.Lag), s.FlushErrors-failedBefore
		if i%10 == 0 {
			queued = max(queued, metricSum(t, reader, "tiercache.writebehind.queue_length"))
		}
	}
	src.down.Store(false)
	t.Logf("outage of %v: max lag %v, queue_length up to %d, %d failed flushes", time.Since(outage).Round(time.Millisecond), maxLag, queued, failed)

	// After it, writes go on and the queue drains.
	for range 50 {
		set()
	}
	recovered := time.Now()
	var lagAfter time.Duration
	eventually(t, time.Minute, "queue never drained", func() bool {
		s := w.Stats()
		lagAfter = s.Lag
		return s.QueueLength == 0 && s.Lag == 0
	})
	t.Logf("drained %v after the last write", time.Since(recovered).Round(time.Millisecond))
	for k, v := range last {
		if got, _ := src.get(k); got != v {
			t.Errorf("source %s = %d, want %d", k, got, v)
		}
	}
	// A flusher counts a flush just after its ack, which the drained queue
	// shows: compare the metrics with counters that have stopped moving.
	counters := func(s tiered.WriteBehindStats) [4]int64 {
		return [4]int64{s.Appended, s.Flushed, s.Retried, s.DeadLettered}
	}
	var s tiered.WriteBehindStats
	got := map[string]int64{}
	for end := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		s = w.Stats()
		for _, result := range []string{"appended", "flushed", "retried", "dead_lettered"} {
			got[result] = metricSum(t, reader, "tiercache.writebehind.writes", attribute.String("result", result))
		}
		if counters(w.Stats()) == counters(s) || time.Now().After(end) {
			break
		}
	}
	if s.DeadLettered != 0 || s.FlushErrors == 0 {
		t.Errorf("stats %+v: want failures and no dead letters (lag after: %v)", s, lagAfter)
	}
	for result, want := range map[string]int64{"appended": s.Appended, "flushed": s.Flushed, "retried": s.Retried, "dead_lettered": 0} {
		if got := got[result]; got != want || (result != "dead_lettered" && got == 0) {
			t.Errorf("writes{result=%s} = %d, want %d", result, got, want)
		}
	}
}

func TestWriteBehindBadInput(t *testing.T) {
	ctx := context.Background()
	if _, err := tiered.NewWriteBehind(newTestCache[int64](t, tiered.Config{}), fastWB(newMemSource().flush)); err == nil {
		t.Error("NewWriteBehind on an L1-only cache: no error")
	}
	rdb, ns := wbNamespace(t, redistest.Single(t))
	c := newTestCache[int64](t, tiered.Config{Redis: rdb, Namespace: ns, MaxKeyBytes: 8})
	if _, err := tiered.NewWriteBehind(c, tiered.WriteBehindConfig[int64]{}); err == nil {
		t.Error("NewWriteBehind without Flush: no error")
	}
	w := newWriteBehind(t, c, tiered.WriteBehindConfig[int64]{NoFlusher: true})
	if err := w.Set(ctx, "much too long", 1); !errors.Is(err, tiered.ErrInvalidKey) {
		t.Errorf("long key: %v", err)
	}
	if err := w.Set(ctx, "k", 1, tiered.WithTTL(-1)); err == nil {
		t.Error("negative TTL: no error")
	}
	if n := rdb.XLen(ctx, "{"+ns+"#wb:0}").Val() + rdb.Exists(ctx, ns+":k").Val(); n != 0 {
		t.Errorf("refused writes left %d entries", n)
	}
	w.Close(ctx)
	if err := w.Set(ctx, "k", 1); !errors.Is(err, tiered.ErrClosed) {
		t.Errorf("Set after Close: %v", err)
	}
}

// scriptHook is a go-redis hook that runs before every script call whose
// arguments include mark (a l2.WBPut mode, the group name), until it returns
// an error for the call to fail with.
type scriptHook struct {
	mark   string
	before func() error
}

func (h *scriptHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			for _, a := range cmd.Args() {
				if a == h.mark {
					if err := h.before(); err != nil {
						cmd.SetErr(err)
						return err
					}
				}
			}
		}
		return next(ctx, cmd)
	}
}
func (h *scriptHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// hookedClient returns a client of the test Redis with hook, closed when
// t ends.
func hookedClient(t *testing.T, r redistest.Target, hook redis.Hook) redis.UniversalClient {
	c := r.Client(t)
	c.AddHook(hook)
	return c
}

func TestWriteBehindLateSetDoesNotOverwriteANewerWrite(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		// A appends write 1, then stalls before writing L2; B writes 2, which
		// is flushed and settled; A's L2 write lands last. The cache must keep
		// 2, with its TTL, as the source does.
		ctx := context.Background()
		rdb, ns := wbNamespace(t, r)
		appended := make(chan struct{})
		var once sync.Once
		slow := hookedClient(t, r, &scriptHook{mark: "put", before: func() error {
			once.Do(func() { close(appended); time.Sleep(300 * time.Millisecond) })
			return nil
		}})
		src := newMemSource()
		a := newTestCache[int64](t, tiered.Config{Redis: slow, Namespace: ns, L2Timeout: time.Second})
		b := newTestCache[int64](t, tiered.Config{Redis: rdb, Namespace: ns})
		wa := newWriteBehind(t, a, tiered.WriteBehindConfig[int64]{NoFlusher: true, Shards: fastWB(nil).Shards})
		wb := newWriteBehind(t, b, fastWB(src.flush))
		done := make(chan error)
		go func() { done <- wa.Set(ctx, "k", 1) }()
		<-appended
		if err := wb.Set(ctx, "k", 2); err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Second, "flush of 2", func() bool { v, _ := src.get("k"); return v == 2 })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Second, "write 1 flushed too", func() bool { return wb.Stats().Flushed == 2 })
		if v, _ := src.get("k"); v != 2 {
			t.Errorf("source = %d, want 2", v)
		}
		if v, err := b.Get(ctx, "k"); err != nil || v != 2 {
			t.Errorf("cache = %d, %v; want 2", v, err)
		}
		if ttl := rdb.PTTL(ctx, ns+":k").Val(); ttl <= 0 {
			t.Errorf("L2 PTTL = %v: the late write left a value that never expires", ttl)
		}
	})
}

func TestWriteBehindFailedAckReplaysInOrder(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		// The first acknowledgement fails after the source took write 1: the
		// flusher gives its shard up, and the replay must not apply write 1
		// after write 2.
		ctx := context.Background()
		_, ns := wbNamespace(t, r)
		var acks atomic.Int64
		flaky := hookedClient(t, r, &scriptHook{mark: "tiercache", before: func() error {
			if acks.Add(1) == 1 {
				return errors.New("injected: ack lost")
			}
			return nil
		}})
		src := newMemSource()
		c := newTestCache[int64](t, tiered.Config{Redis: flaky, Namespace: ns})
		cfg := fastWB(src.flush)
		cfg.Shards = 1
		w := newWriteBehind(t, c, cfg)
		if err := w.Set(ctx, "k", 1); err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Second, "first flush", func() bool { return acks.Load() >= 1 })
		if err := w.Set(ctx, "k", 2); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := w.Close(cctx); err != nil {
			t.Fatal(err)
		}
		src.mu.Lock()
		ids := src.applied["k"]
		src.mu.Unlock()
		for i := 1; i < len(ids); i++ {
			if idLess(ids[i], ids[i-1]) {
				t.Errorf("applied %v: an older write after a newer one", ids)
			}
		}
		if v, _ := src.get("k"); v != 2 || len(ids) < 2 {
			t.Errorf("source = %d after %v, want 2 and a replay", v, ids)
		}
	})
}

func TestWriteBehindCrashLosesNoAcknowledgedWrite(t *testing.T) {
	// A process acknowledges 10,000 writes over 1,000 keys, flushes a few
	// batches and hangs in the next, holding writes it was handed, and is
	// killed with SIGKILL. Another process starts: the source (a Redis
	// hash) ends with exactly the last acknowledged value of every key.
	rdb, ns := wbNamespace(t, redistest.Single(t))
	t.Cleanup(func() { rdb.Del(context.Background(), ns+"#source") })
	pc := peerConfig{Addr: redistest.Addr(t), Namespace: ns, WriteBehind: "write"}
	writer := startPeer(t, pc)
	var acked map[string]int64
	select {
	case line := <-writer.lines("acked"):
		if err := json.Unmarshal([]byte(line), &acked); err != nil {
			t.Fatalf("acked: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("writer did not finish")
	}
	if err := writer.cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	ctx := context.Background()
	before := rdb.HLen(ctx, ns+"#source").Val()
	queued := int64(0)
	for s := range 8 {
		queued += rdb.XLen(ctx, "{"+ns+"#wb:"+strconv.Itoa(s)+"}").Val()
	}
	pending := int64(0)
	for s := range 8 {
		p, _ := rdb.XPending(ctx, "{"+ns+"#wb:"+strconv.Itoa(s)+"}", "tiercache").Result()
		if p != nil {
			pending += p.Count
		}
	}
	t.Logf("killed: %d keys acked, %d in the source, %d writes queued, %d of them handed to the dead process", len(acked), before, queued, pending)
	if len(acked) != 1000 || queued == 0 || pending == 0 {
		t.Fatalf("the test did not kill the writer mid-flush")
	}

	pc.WriteBehind = "drain"
	drainer := startPeer(t, pc)
	select {
	case <-drainer.lines("drained"):
	case <-time.After(60 * time.Second):
		t.Fatal("drainer did not finish")
	}
	got := rdb.HGetAll(ctx, ns+"#source").Val()
	if len(got) != len(acked) {
		t.Errorf("source has %d keys, want %d", len(got), len(acked))
	}
	wrong := 0
	for k, v := range acked {
		if got[k] != strconv.FormatInt(v, 10) {
			if wrong++; wrong <= 5 {
				t.Errorf("source %s = %q, want %d", k, got[k], v)
			}
		}
	}
	if wrong > 0 {
		t.Errorf("%d keys wrong", wrong)
	}
}

// runWriteBehindPeer is a write-behind process over the Redis hash
// "<ns>#source". "write": it writes 10,000 values over 1,000 keys from 8
// goroutines (each key written by one, 10 times), flushing 3 batches and
// hanging in the 4th, prints "acked <json of the last acknowledged value
// per key>" and waits to be killed. "drain": it flushes until the
// streams are empty, prints "drained" and exits.
func runWriteBehindPeer(rdb *redis.Client, pc peerConfig) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Generous L2 timeouts: this test is about crashes, not about a
	// loaded machine opening the circuit breaker.
	c, err := tiered.New[int64](tiered.Config{Redis: rdb, Namespace: pc.Namespace, Logger: log, L2Timeout: 2 * time.Second, BreakerFailures: 1000})
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer New:", err)
		os.Exit(2)
	}
	var batches atomic.Int64
	flush := func(ctx context.Context, ws []tiered.PendingWrite[int64]) error {
		if pc.WriteBehind == "write" && batches.Add(1) > 3 {
			select {} // hangs, holding its batch, until killed
		}
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, w := range ws {
				p.HSet(ctx, pc.Namespace+"#source", w.Key, w.Value)
			}
			return nil
		})
		return err
	}
	cfg := tiered.WriteBehindConfig[int64]{Flush: flush, LockTTL: time.Second, FlushTimeout: 300 * time.Millisecond,
		PollInterval: 5 * time.Millisecond, MaxRetryBackoff: 200 * time.Millisecond}
	w, err := tiered.NewWriteBehind(c, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer NewWriteBehind:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	if pc.WriteBehind == "drain" {
		for {
			time.Sleep(50 * time.Millisecond)
			if s := w.Stats(); s.QueueLength == 0 && s.Shards == 8 {
				break
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := w.Close(cctx)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "peer Close:", err)
		}
		fmt.Println("drained")
		os.Exit(0)
	}
	var mu sync.Mutex
	acked := map[string]int64{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Its 125 keys (≡ g mod 8: one writer per key), 10 writes
			// each, in random order.
			var order []string
			for k := g; k < 1000; k += 8 {
				for range 10 {
					order = append(order, "k"+strconv.Itoa(k))
				}
			}
			r := rand.New(rand.NewPCG(uint64(g), 1))
			r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			for i, key := range order {
				v := int64(g*10_000 + i)
				if err := w.Set(ctx, key, v); err != nil {
					fmt.Fprintln(os.Stderr, "peer Set:", err)
					continue
				}
				mu.Lock()
				acked[key] = v
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	b, _ := json.Marshal(acked)
	fmt.Println("acked " + string(b))
	select {}
}

// TestWriteBehindSurvivesKillsAndLostReplies: three flusher processes, one
// SIGKILLed and replaced every 2 s, read their shards through a proxy that
// delays the reply to every fourth XREADGROUP past their read timeout
// (Redis has run it: its entries are handed over, its reply lost or the
// read retried). This process acknowledges 3,000 writes
// over 200 keys meanwhile. The source, which records any write applied
// after a newer one of its key, must end with every key's last
// acknowledged value, and no older write may ever be applied after a
// newer one.
func TestWriteBehindSurvivesKillsAndLostReplies(t *testing.T) {
	if testing.Short() {
		t.Skip("20 s of crashes")
	}
	ctx := context.Background()
	srv := redistest.Start(t)
	p := faultproxy.Start(t, srv.Addr)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { raw.Close() })
	ns := redistest.Namespace(t)
	pc := peerConfig{
		URL: "redis://" + p.Addr() + "?read_timeout=100ms&write_timeout=100ms", DBAddr: srv.Addr,
		Namespace: ns, WriteBehind: "flush",
	}
	start := func() *peer {
		f := startPeer(t, pc)
		select {
		case <-f.lines("ready"):
		case <-time.After(30 * time.Second):
			t.Error("flusher did not start")
		}
		return f
	}
	flushers := []*peer{start(), start(), start()}

	c := newIntCache(t, tiered.Config{Redis: raw, Namespace: ns, L2Timeout: time.Second})
	w := newWriteBehind(t, c, tiered.WriteBehindConfig[int64]{NoFlusher: true})
	stop := make(chan struct{})
	var faults sync.WaitGroup
	// Every fourth read's reply comes after the flusher's read timeout:
	// go-redis retries the read, or the flusher's next read comes first.
	p.DelayReplies([]byte("xreadgroup"), 4, 200*time.Millisecond) // go-redis sends it in lower case
	var kills int
	var reread atomic.Int64 // writes the flushers found pending on them after a lost reply
	faults.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Second):
			}
			i := kills % len(flushers)
			if err := flushers[i].cmd.Process.Kill(); err != nil { // SIGKILL
				t.Error(err)
			}
			reread.Add(flushers[i].rereads())
			kills++
			flushers[i] = start()
		}
	})

	var mu sync.Mutex
	acked := make(map[string]int64)
	var writers sync.WaitGroup
	for g := range 4 {
		writers.Go(func() {
			// Keys ≡ g mod 4: one writer per key, so its values rise.
			for i := range 750 {
				key := "k" + strconv.Itoa(g+4*(i%50))
				v := int64(1 + i*4 + g)
				if err := w.Set(ctx, key, v); err != nil {
					t.Errorf("Set(%s): %v", key, err)
					continue
				}
				mu.Lock()
				acked[key] = v
				mu.Unlock()
				time.Sleep(12 * time.Millisecond) // spread the writes over the kills
			}
		})
	}
	writers.Wait()
	close(stop)
	faults.Wait()
	p.DelayReplies(nil, 0, 0)

	// The flushers alive drain what is left, with no more faults. A write
	// stuck on a live flusher would never be flushed.
	queued := func() (n int64) {
		for s := range 8 {
			n += raw.XLen(ctx, "{"+ns+"#wb:"+strconv.Itoa(s)+"}").Val()
		}
		return n
	}
	for deadline := time.Now().Add(30 * time.Second); queued() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("%d writes still queued 30 s after the last fault", queued())
			break
		}
	}
	for _, f := range flushers {
		reread.Add(f.rereads())
	}
	t.Logf("3000 writes acknowledged over %d keys; %d flushers killed; %d writes re-read from a flusher's own pending list", len(acked), kills, reread.Load())
	if v := raw.LRange(ctx, ns+"#reordered", 0, 20).Val(); len(v) > 0 {
		t.Errorf("%d writes applied after a newer one of their key, e.g. %q", raw.LLen(ctx, ns+"#reordered").Val(), v)
	}
	got := raw.HGetAll(ctx, ns+"#source").Val()
	wrong := 0
	for k, v := range acked {
		if got[k] != strconv.FormatInt(v, 10) {
			if wrong++; wrong <= 5 {
				t.Errorf("source %s = %q, want its last acknowledged write %d", k, got[k], v)
			}
		}
	}
	if wrong > 0 || len(got) != len(acked) {
		t.Errorf("%d of %d keys wrong; the source has %d keys", wrong, len(acked), len(got))
	}
}

// applyRising is the source of TestWriteBehindSurvivesKillsAndLostReplies:
// it sets KEYS[1][ARGV[1]] to ARGV[2], recording in the list KEYS[2] a
// value lower than the one it replaces (a write applied after a newer one).
var applyRising = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) > tonumber(ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[1] .. ': ' .. ARGV[2] .. ' after ' .. cur)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1`)

// runFlusherPeer is a write-behind flusher over pc.URL, applying to the
// source "<ns>#source" in the Redis at pc.DBAddr, until killed.
func runFlusherPeer(pc peerConfig) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	rdb, err := tiered.NewRedisClient(pc.URL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer client:", err)
		os.Exit(2)
	}
	db := redis.NewClient(&redis.Options{Addr: pc.DBAddr})
	c, err := tiered.New[int64](tiered.Config{Redis: rdb, Namespace: pc.Namespace, Logger: log, DisableInvalidation: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer New:", err)
		os.Exit(2)
	}
	flush := func(ctx context.Context, ws []tiered.PendingWrite[int64]) error {
		_, err := db.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, w := range ws {
				applyRising.Eval(ctx, p, []string{pc.Namespace + "#source", pc.Namespace + "#reordered"}, w.Key, w.Value)
			}
			return nil
		})
		return err
	}
	w, err := tiered.NewWriteBehind(c, tiered.WriteBehindConfig[int64]{Flush: flush, LockTTL: time.Second,
		FlushTimeout: 300 * time.Millisecond, PollInterval: 5 * time.Millisecond, MaxRetryBackoff: 200 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer NewWriteBehind:", err)
		os.Exit(2)
	}
	fmt.Println("ready")
	for range time.Tick(50 * time.Millisecond) {
		fmt.Println("stats", w.Stats().Reread)
	}
}

// rereads returns the last count of re-read writes a flusher peer printed.
func (p *peer) rereads() int64 {
	var n int64
	for {
		select {
		case line, ok := <-p.lines("stats"):
			if !ok {
				return n
			}
			n, _ = strconv.ParseInt(line, 10, 64)
		default:
			return n
		}
	}
}

// TestWriteBehindRefusesAShardChange: a process with another Shards than
// the one the namespace's queued writes were made with would never flush
// them (or reorder a key's writes): NewWriteBehind refuses it until they
// are drained. On a cluster, writes queued under the stream names of a
// version before the streams were spread over the masters are refused the
// same way.
func TestWriteBehindRefusesAShardChange(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		rdb, ns := wbNamespace(t, r)
		c := newIntCache(t, tiered.Config{Redis: rdb, Namespace: ns})
		appender := newWriteBehind(t, c, tiered.WriteBehindConfig[int64]{NoFlusher: true, Shards: 4})
		for i := range 20 {
			if err := appender.Set(ctx, fmt.Sprintf("k%d", i), int64(i)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := tiered.NewWriteBehind(c, tiered.WriteBehindConfig[int64]{NoFlusher: true, Shards: 8}); !errors.Is(err, tiered.ErrShardsChanged) {
			t.Fatalf("NewWriteBehind with Shards 8 over 20 queued writes of 4 shards: %v, want ErrShardsChanged", err)
		}
		src := newMemSource()
		cfg := fastWB(src.flush)
		cfg.Shards = 4
		drainer := newWriteBehind(t, c, cfg)
		if err := drainer.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if v, _ := src.get("k19"); v != 19 {
			t.Fatalf("k19 = %d after the drain, want 19", v)
		}
		w := newWriteBehind(t, c, tiered.WriteBehindConfig[int64]{NoFlusher: true, Shards: 8})
		if err := w.Set(ctx, "k", 1); err != nil {
			t.Fatal(err)
		}
		if !r.Cluster() {
			return
		}
		ns2 := redistest.Namespace(t)
		legacy := newTestCache[int64](t, tiered.Config{Redis: rdb, Namespace: ns2})
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: "{" + ns2 + "#wb:0}", Values: []any{"k", "k", "v", "1", "ttl", 1000, "keep", 1000}}).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := tiered.NewWriteBehind(legacy, tiered.WriteBehindConfig[int64]{NoFlusher: true}); !errors.Is(err, tiered.ErrShardsChanged) {
			t.Errorf("NewWriteBehind over a write queued under an older version's stream name: %v, want ErrShardsChanged", err)
		}
	})
}
