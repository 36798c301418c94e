package tiered_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

// failoverMargin is how long after a replica's promotion a write may still
// fail: the slot-map reload (at most 200 ms after the error that asks for
// it), the outbox's next replay and the bus's resubscription. Stated in
// docs/operations.md.
const failoverMargin = 2 * time.Second

// TestClusterFailoverKeepsTheBound kills the master that holds the bus's
// channel on a local cluster while one cache writes and another reads:
// (a) within 10 s of the replica's promotion a write in one is seen by the
// other within 1 s again (the bus is fresh on the new master), and no read
// is older than the staleness bound allows; (b) writes fail only between
// the kill and the promotion plus failoverMargin, and reads never fail.
func TestClusterFailoverKeepsTheBound(t *testing.T) {
	if testing.Short() {
		t.Skip("a cluster failover")
	}
	t.Parallel()
	ctx := context.Background()
	const bound = 2 * time.Second // the default
	cl := redistest.StartCluster(t)
	ns := redistest.Namespace(t)
	db := newClient(t)
	const nkeys = 30
	t.Cleanup(func() {
		for i := range nkeys {
			db.Del(context.Background(), dbKey(ns, fmt.Sprintf("k%d", i)))
		}
	})
	for i := range nkeys {
		if err := db.Set(ctx, dbKey(ns, fmt.Sprintf("k%d", i)), 0, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	open := func() *tiered.Cache[int64] {
		rdb := libraryClient(t, cl.URL())
		return newIntCache(t, tiered.Config{Redis: rdb, Namespace: ns})
	}
	a, b := open(), open()
	load := func(ctx context.Context, key string) (int64, error) {
		v, err := db.Get(ctx, dbKey(ns, key)).Int64()
		if errors.Is(err, redis.Nil) {
			return 0, nil
		}
		return v, err
	}

	// B reads all along; each read is (key, start, version).
	type read struct {
		key   string
		start int64
		ver   int64
	}
	var (
		reads    []read
		readErrs atomic.Int64
		stop     = make(chan struct{})
		readers  sync.WaitGroup
	)
	readers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			key := fmt.Sprintf("k%d", rand.IntN(nkeys))
			start := time.Now().UnixNano()
			v, err := b.GetOrLoad(ctx, key, load)
			if err != nil {
				readErrs.Add(1)
			} else {
				reads = append(reads, read{key, start, v})
			}
			time.Sleep(200 * time.Microsecond)
		}
	})

	// A writes: the database, then Set.
	history := make(map[string][]faultWrite)
	vers := make(map[string]int64)
	var failures []time.Time
	write := func() {
		key := fmt.Sprintf("k%d", rand.IntN(nkeys))
		vers[key]++
		v := vers[key]
		if err := db.Set(ctx, dbKey(ns, key), v, 0).Err(); err != nil {
			t.Fatal(err)
		}
		err := a.Set(ctx, key, v)
		if err != nil {
			failures = append(failures, time.Now())
			if !errors.Is(err, tiered.ErrL2Unavailable) {
				t.Errorf("a failed write returned %v, want ErrL2Unavailable", err)
			}
		}
		history[key] = append(history[key], faultWrite{ver: v, returned: time.Now().UnixNano(), failed: err != nil})
		time.Sleep(time.Duration(1+rand.IntN(3)) * time.Millisecond)
	}
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
		write()
	}

	victim, err := cl.MasterOf(ctx, "tiercache:inv:"+ns)
	if err != nil {
		t.Fatal(err)
	}
	victim.Stop()
	killed := time.Now()
	promotedCh := make(chan time.Time, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := cl.WaitHealthy(wctx); err != nil {
			t.Error(err)
		}
		promotedCh <- time.Now()
	}()
	var promoted time.Time
	for promoted.IsZero() {
		select {
		case promoted = <-promotedCh:
		default:
			write()
		}
	}

	// Probes: B reads a new key (its L1 copy is then new, and without
	// the bus would be served for a whole bound), A writes it, and B must
	// see the write within 1 s.
	var recovered time.Time
	var replayed int64
	for i := 0; recovered.IsZero() && time.Since(promoted) < 10*time.Second; i++ {
		write()
		if replayed == 0 && a.Stats().OutboxHeld == 0 {
			replayed = time.Now().UnixNano()
		}
		key := fmt.Sprintf("probe%d", i)
		if _, err := b.GetOrLoad(ctx, key, func(context.Context, string) (int64, error) { return 0, nil }); err != nil {
			continue
		}
		if err := a.Set(ctx, key, 1); err != nil {
			continue
		}
		set := time.Now()
		for time.Since(set) < time.Second {
			if v, err := b.Get(ctx, key); err == nil && v == 1 {
				recovered = time.Now()
				break
			}
			write()
		}
	}
	if recovered.IsZero() {
		t.Errorf("10 s after the promotion, a write in one cache was still not seen by the other within 1 s; b: %+v", b.Stats().Bus)
	}
	for end := time.Now().Add(bound + time.Second); time.Now().Before(end) || replayed == 0; {
		if replayed == 0 && a.Stats().OutboxHeld == 0 {
			replayed = time.Now().UnixNano()
		}
		if time.Since(promoted) > 20*time.Second {
			t.Fatalf("the outbox still holds %d invalidations 20 s after the promotion", a.Stats().OutboxHeld)
		}
		write()
	}
	close(stop)
	readers.Wait()

	violations := 0
	var first string
	for _, r := range reads {
		for _, w := range history[r.key] {
			if w.ver <= r.ver {
				continue
			}
			since := w.returned
			if w.failed {
				since = max(since, replayed)
			}
			if r.start > since+int64(bound) {
				if violations++; violations == 1 {
					first = fmt.Sprintf("%s version %d read at kill%+v; version %d returned (failed %v) at kill%+v",
						r.key, r.ver, time.Duration(r.start-killed.UnixNano()), w.ver, w.failed, time.Duration(w.returned-killed.UnixNano()))
				}
				break
			}
		}
	}
	var outside int
	for _, f := range failures {
		if f.Before(killed) || f.After(promoted.Add(failoverMargin)) {
			outside++
		}
	}
	writes := 0
	for _, h := range history {
		writes += len(h)
	}
	last := time.Duration(0)
	if len(failures) > 0 {
		last = failures[len(failures)-1].Sub(promoted)
	}
	t.Logf("promoted %v after the kill; bus fresh again (a write seen within 1 s) %v after the promotion; %d writes, %d failed (the last %v after the promotion), %d outside kill..promotion+%v; %d reads, %d failed, %d beyond the bound; a: %+v; b: bus %+v",
		promoted.Sub(killed), recovered.Sub(promoted), writes, len(failures), last, outside, failoverMargin, len(reads), readErrs.Load(), violations, a.Stats(), b.Stats().Bus)
	if violations > 0 {
		t.Errorf("%d reads older than the bound allows (first: %s)", violations, first)
	}
	if outside > 0 {
		t.Errorf("%d writes failed outside the kill..promotion+%v window", outside, failoverMargin)
	}
	if n := readErrs.Load(); n > 0 {
		t.Errorf("%d reads failed; reads fall back to the loader", n)
	}
	if len(reads) < 1000 {
		t.Errorf("only %d reads", len(reads))
	}
}

// TestClusterFailoverKeepsAcknowledgedWrites: two write-behind processes
// write increasing versions to 100 keys while a master dies, its replica
// cut off from it for the last half second (its link killed, the replica
// frozen so that it cannot reconnect, as in a network partition) and the
// source down, so that the dead master's last writes were not flushed.
// After the promotion and the drain, every key's source value is its last
// acknowledged write (or a later one whose Set failed: an append that
// Redis made but could not confirm), and no older version was applied
// after a newer one. An append is acknowledged only once a replica has it
// (WAIT), so the promoted replica has every acknowledged write; without
// the WAIT (Replicas -1), the writes acknowledged while the replica was
// cut off are lost.
//
// The promoted replica has no replica of its own, so its shards' appends
// fail (ErrNotReplicated) until the dead master is restarted and rejoins
// as its replica, as an operator would; then writes to 100 other keys must
// succeed.
func TestClusterFailoverKeepsAcknowledgedWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("a cluster failover")
	}
	t.Run("wait", func(t *testing.T) {
		t.Parallel()
		if lost, reordered := wbFailover(t, 0); lost > 0 || reordered > 0 {
			t.Errorf("%d keys without their last acknowledged write; %d writes applied after a newer write of their key", lost, reordered)
		}
	})
	t.Run("no-wait", func(t *testing.T) {
		t.Parallel()
		if lost, _ := wbFailover(t, -1); lost == 0 {
			t.Errorf("no acknowledged write lost without the WAIT: the test cannot see what it checks")
		}
	})
}

// wbFailover runs the test above with WriteBehindConfig.Replicas and
// returns how many keys end without their last acknowledged write, and
// how many writes were applied after a newer write of their key.
func wbFailover(t *testing.T, replicas int) (lost, reordered int) {
	ctx := context.Background()
	cl := redistest.StartCluster(t)
	ns := redistest.Namespace(t)
	src := newMemSource()
	var reorders atomic.Int64
	var mu sync.Mutex
	newest := make(map[string]int64) // the highest version applied so far
	flush := func(ctx context.Context, ws []tiered.PendingWrite[int64]) error {
		if err := src.flush(ctx, ws); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, w := range ws {
			if w.Value < newest[w.Key] {
				reorders.Add(1)
			}
			newest[w.Key] = max(newest[w.Key], w.Value)
		}
		return nil
	}
	var wbs []*tiered.WriteBehind[int64]
	for range 2 {
		rdb := libraryClient(t, cl.URL())
		c := newIntCache(t, tiered.Config{Redis: rdb, Namespace: ns})
		cfg := fastWB(flush)
		cfg.Shards = 8
		cfg.Replicas = replicas
		wbs = append(wbs, newWriteBehind(t, c, cfg))
	}

	const nkeys, writers = 200, 4 // k0..k99 before the kill, k100..k199 after
	var (
		acked, tried [nkeys]int64 // the last version acknowledged, and attempted
		fails        [writers][]time.Time
	)
	// run writes keys [from, to) round after round until stop, each writer
	// its own keys, and then (if final) each key once more until its write
	// is acknowledged.
	run := func(from, to int, stop <-chan struct{}, final bool) {
		var wg sync.WaitGroup
		for g := range writers {
			wg.Go(func() {
				w := wbs[g%2]
				set := func(k int) error {
					tried[k]++
					err := w.Set(ctx, fmt.Sprintf("k%d", k), tried[k])
					if err != nil {
						fails[g] = append(fails[g], time.Now())
						return err
					}
					acked[k] = tried[k]
					return nil
				}
			rounds:
				for {
					for k := from + g; k < to; k += writers {
						select {
						case <-stop:
							break rounds
						default:
						}
						_ = set(k)
						time.Sleep(time.Millisecond)
					}
				}
				for k := from + g; final && k < to; k += writers {
					for deadline := time.Now().Add(10 * time.Second); set(k) != nil; {
						if time.Now().After(deadline) {
							t.Errorf("k%d: Set still fails after 10 s", k)
							return
						}
					}
				}
			})
		}
		wg.Wait()
	}

	stop := make(chan struct{})
	running := make(chan struct{})
	go func() { run(0, 100, stop, false); close(running) }()
	time.Sleep(time.Second)
	victim, err := cl.MasterOf(ctx, "k0")
	if err != nil {
		t.Fatal(err)
	}
	heir, err := cl.ReplicaOf(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	// The fault: the source goes down and the replica is cut off; half a
	// second later (under NodeTimeout, so that the replica is not marked
	// failed itself), the master dies.
	src.down.Store(true)
	heir.Freeze()
	faultAt := time.Now()
	vc := redis.NewClient(&redis.Options{Addr: victim.Addr})
	if err := vc.ClientKillByFilter(ctx, "TYPE", "replica").Err(); err != nil {
		t.Fatal(err)
	}
	vc.Close()
	time.Sleep(redistest.NodeTimeout / 2)
	victim.Stop()
	heir.Thaw()
	close(stop)
	<-running
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := cl.WaitHealthy(wctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	src.down.Store(false)
	if err := victim.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitHealthy(wctx); err != nil {
		t.Fatal(err)
	}
	synced := time.Now()
	stop = make(chan struct{})
	time.AfterFunc(time.Second, func() { close(stop) })
	run(100, 200, stop, true)
	for _, w := range wbs {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := w.Close(cctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		cancel()
	}

	for k := range nkeys {
		v, _ := src.get(fmt.Sprintf("k%d", k))
		if v < acked[k] || v > tried[k] {
			if lost++; lost <= 3 && replicas >= 0 {
				t.Errorf("k%d: the source has version %d, the last acknowledged write was %d (the last tried %d)", k, v, acked[k], tried[k])
			}
		}
	}
	var failed, late int
	for _, fs := range fails {
		for _, f := range fs {
			failed++
			if f.Before(faultAt) || f.After(synced.Add(failoverMargin)) {
				late++
			}
		}
	}
	var st [2]tiered.WriteBehindStats
	for i, w := range wbs {
		st[i] = w.Stats()
	}
	t.Logf("Replicas %d: promoted %v after the fault began, the old master back as its replica %v after the promotion; %d Sets failed, %d outside fault..resync+%v; %d keys lost their last acknowledged write; %d writes applied after a newer one; stats %+v %+v",
		replicas, promoted.Sub(faultAt), synced.Sub(promoted), failed, late, failoverMargin, lost, reorders.Load(), st[0], st[1])
	if late > 0 && replicas >= 0 {
		t.Errorf("%d Sets failed outside fault..resync+%v", late, failoverMargin)
	}
	return lost, int(reorders.Load())
}

// TestWriteBehindShardsSpreadOverMasters: on a cluster, the shards' streams
// live on every master, so that one master's death holds back only its
// share of them; the slot write-behind computes is the one Redis does.
func TestWriteBehindShardsSpreadOverMasters(t *testing.T) {
	ctx := context.Background()
	cl := redistest.SharedCluster(t)
	rdb := cl.Target().Client(t)
	for _, key := range []string{"123456789", "k", "tiercache#wb:3.17", "{user1000}.following", "a{}b", "x{y}z{w}", "{", "}{a}"} {
		want, err := rdb.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := tiered.KeySlot(key); int64(got) != want {
			t.Errorf("KeySlot(%q) = %d, Redis says %d", key, got, want)
		}
	}
	for _, shards := range []int{3, 8, 64} {
		c := newIntCache(t, tiered.Config{Redis: rdb, Namespace: redistest.Namespace(t)})
		w := newWriteBehind(t, c, tiered.WriteBehindConfig[int64]{NoFlusher: true, Shards: shards})
		masters := make(map[string]int)
		for _, s := range tiered.Streams(w) {
			m, err := cl.MasterOf(ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			masters[m.Addr]++
		}
		if len(masters) != 3 {
			t.Errorf("%d shards live on %d masters (%v), want all 3", shards, len(masters), masters)
		}
		// A master's slot range holds all but the two shards whose ranges
		// straddle its ends, which may go to its neighbours.
		for addr, n := range masters {
			if n < shards/3-1 {
				t.Errorf("%d shards: master %s holds %d of them, want at least %d", shards, addr, n, shards/3-1)
			}
		}
	}
}
