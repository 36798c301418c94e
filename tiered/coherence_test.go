package tiered_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

func newIntCache(t *testing.T, cfg tiered.Config) *tiered.Cache[int64] {
	t.Helper()
	return newTestCache[int64](t, cfg)
}

// write is one write by the test's process, A.
type write struct {
	ver      int64
	returned int64 // Unix ns when A's Set or Delete returned
}

// TestCoherenceAcrossProcesses: A writes (the database, then Set or Delete
// of the cache), while B and C, in their own processes, read through their
// own L1s. No read that starts the staleness bound after a write returned
// may see a version older than that write's. With A's bus switched off, the
// same workload must show violations, or the test could not see them.
func TestCoherenceAcrossProcesses(t *testing.T) {
	t.Run("bus", func(t *testing.T) {
		redistest.Each(t, func(t *testing.T, r redistest.Target) {
			if n := coherence(t, r, 1000, true); n != 0 {
				t.Errorf("%d reads beyond the bound", n)
			}
		})
	})
	t.Run("no-bus", func(t *testing.T) {
		if n := coherence(t, redistest.Single(t), 200, false); n == 0 {
			t.Errorf("no stale read without the bus: the test cannot see what it checks")
		}
	})
}

// coherence runs the workload and returns how many reads broke the bound.
func coherence(t *testing.T, r redistest.Target, writes int, bus bool) (violations int) {
	ctx := context.Background()
	addr, ns := redistest.Addr(t), redistest.Namespace(t)
	const (
		bound = 100 * time.Millisecond
		nkeys = 10
	)
	raw := newClient(t)
	t.Cleanup(func() {
		for i := range nkeys {
			raw.Del(context.Background(), dbKey(ns, fmt.Sprintf("k%d", i)))
		}
	})
	for i := range nkeys {
		if err := raw.Set(ctx, dbKey(ns, fmt.Sprintf("k%d", i)), 0, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	a := newIntCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, StalenessBound: bound, DisableInvalidation: !bus})
	dir := t.TempDir()
	var readers []*peer
	var running []<-chan string
	// Without A's bus, the readers' own buses get a long bound: on a loaded
	// machine one of 100 ms lapses, and the readers would then skip their
	// old L1 copies, hiding the stale reads that the control must show.
	readerBound := bound
	if !bus {
		readerBound = 10 * time.Second
	}
	for _, name := range []string{"b", "c"} {
		p := startPeer(t, peerConfig{Addr: addr, URL: peerURL(r), Namespace: ns, Bound: readerBound})
		readers = append(readers, p)
		running = append(running, p.start("readloop %s %d", filepath.Join(dir, name), nkeys))
	}
	// The writes start once both readers read: a process that starts late
	// on a loaded machine would otherwise read after the last write.
	for _, p := range readers {
		eventually(t, 20*time.Second, "the reader reads", func() bool { s := p.stats(); return s.L1Hits+s.L1Misses > 0 })
	}

	history := make(map[string][]write)
	vers := make(map[string]int64)
	var failed int
	for range writes {
		key := fmt.Sprintf("k%d", rand.IntN(nkeys))
		vers[key]++
		v := vers[key]
		if err := raw.Set(ctx, dbKey(ns, key), v, 0).Err(); err != nil {
			t.Fatal(err)
		}
		var err error
		if rand.IntN(2) == 0 {
			err = a.Set(ctx, key, v)
		} else {
			err = a.Delete(ctx, key)
		}
		switch {
		case errors.Is(err, tiered.ErrL2Unavailable):
			// Not acknowledged (Redis too slow for WriteTimeout on a
			// loaded machine): the bound runs from the outbox's replay,
			// which the test cannot see, so the write is left out.
			failed++
			continue
		case err != nil:
			t.Fatal(err)
		}
		history[key] = append(history[key], write{ver: v, returned: time.Now().UnixNano()})
		time.Sleep(time.Duration(rand.IntN(1000)) * time.Microsecond)
	}
	// On a loaded machine the writes can outrun the readers: they read on
	// until they have made as many reads as there were writes (reads after
	// the last write are tested as well, against the latest versions).
	eventually(t, time.Minute, "the readers read as often as A wrote", func() bool {
		var n int64
		for _, p := range readers {
			s := p.stats()
			n += s.L1Hits + s.L1Misses
		}
		return n >= int64(writes)
	})
	for i, p := range readers {
		p.do("stopread")
		if r := p.recv(running[i]); !strings.HasPrefix(r, "ok ") {
			t.Fatalf("reader: %s", r)
		}
	}

	var reads, stale int
	var worst time.Duration
	for _, name := range []string{"b", "c"} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		s := bufio.NewScanner(f)
		for s.Scan() {
			var key, got string
			var start int64
			if _, err := fmt.Sscan(s.Text(), &key, &start, &got); err != nil {
				t.Fatalf("reader line %q: %v", s.Text(), err)
			}
			if got == "err" {
				t.Errorf("reader %s: a read of %s failed", name, key)
				continue
			}
			v, _ := strconv.ParseInt(got, 10, 64)
			reads++
			// The first write newer than what the read saw, if it had
			// returned before the read started, says how stale the read was.
			h := history[key]
			i, _ := slices.BinarySearchFunc(h, v+1, func(w write, ver int64) int { return int(w.ver - ver) })
			if i == len(h) || h[i].returned > start {
				continue
			}
			stale++
			late := time.Duration(start - h[i].returned)
			worst = max(worst, late)
			if late > bound {
				violations++
				if bus && violations <= 5 {
					t.Errorf("reader %s read %s = %d, %v after version %d was written", name, key, v, late, h[i].ver)
				}
			}
		}
		f.Close()
	}
	t.Logf("%d writes (%d not acknowledged), %d reads in 2 processes: %d saw an older version (worst %v after the newer write returned), %d beyond the %v bound",
		writes, failed, reads, stale, worst, violations, bound)
	if failed > writes/2 {
		t.Errorf("%d of %d writes failed: too few acknowledged to test anything", failed, writes)
	}
	if reads < writes {
		t.Errorf("only %d reads; the readers did not run long enough to test anything", reads)
	}
	return violations
}

// TestLostMessageIsFlushedOnResubscribe: B's subscriber is cut off while
// L2 changes with no message reaching B. Once B has resubscribed, it must
// not serve its old L1 copy.
func TestLostMessageIsFlushedOnResubscribe(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	ns := redistest.Namespace(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { raw.Close() })
	raw.Set(ctx, dbKey(ns, "k"), 1, 0)
	b := startPeer(t, peerConfig{Addr: srv.Addr, Namespace: ns, Bound: 2 * time.Second})
	if r := b.do("load k"); r != "ok 1" {
		t.Fatalf("B load k = %q", r)
	}
	// A write whose message is lost: a cache with its bus switched off.
	silent := newIntCache(t, tiered.Config{Redis: raw, Namespace: ns, DisableInvalidation: true})
	raw.Set(ctx, dbKey(ns, "k"), 2, 0)
	if err := silent.Set(ctx, "k", 2); err != nil {
		t.Fatal(err)
	}
	if r := b.do("get k"); r != "ok 1" {
		t.Fatalf("B get k = %q before the resubscription, want its L1 copy 1 (else this test proves nothing)", r)
	}
	flushes := b.stats().Flushes
	if err := raw.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "B did not flush after its subscriber was killed", func() bool { return b.stats().Flushes > flushes })
	if r := b.do("get k"); r != "ok 2" {
		t.Errorf("B get k = %q after resubscribing, want 2 from L2", r)
	}
	t.Logf("B stats after: %+v", b.stats().Bus)
}

// TestStaleFillIsFenced: B's slow loader reads v1; A writes v2 to the
// database and then deletes (or sets) k while B's load is in flight. After
// B's load returns, v1 goes back to B's caller but into neither B's L1 nor
// L2. With the fences switched off, the same steps leave v1 cached: the
// test sees the race it guards against.
func TestStaleFillIsFenced(t *testing.T) {
	for _, op := range []string{"delete", "set"} {
		for _, fenced := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/fenced=%v", op, fenced), func(t *testing.T) {
				ctx := context.Background()
				addr, ns := redistest.Addr(t), redistest.Namespace(t)
				raw := newClient(t)
				t.Cleanup(func() { raw.Del(context.Background(), dbKey(ns, "k")) })
				raw.Set(ctx, dbKey(ns, "k"), 1, 0)
				a := newIntCache(t, tiered.Config{Redis: newClient(t), Namespace: ns})
				b := startPeer(t, peerConfig{Addr: addr, Namespace: ns, Bound: 2 * time.Second, NoFence: !fenced})

				load := b.start("slowload k")
				if r := b.recv(load); r != "loaded 1" {
					t.Fatalf("B's loader: %q", r)
				}
				raw.Set(ctx, dbKey(ns, "k"), 2, 0)
				var err error
				if op == "delete" {
					err = a.Delete(ctx, "k")
				} else {
					err = a.Set(ctx, "k", 2)
				}
				if err != nil {
					t.Fatal(err)
				}
				eventually(t, 2*time.Second, "B never got A's invalidation", func() bool { return b.stats().Bus.ReceivedKeys >= 1 })
				b.do("release")
				if r := b.recv(load); r != "ok 1" {
					t.Fatalf("B's GetOrLoad = %q, want its loaded value 1", r)
				}

				inL1 := b.do("peek k")
				reader := newIntCache(t, tiered.Config{Redis: newClient(t), Namespace: ns, DisableInvalidation: true})
				v, err := reader.Get(ctx, "k")
				inL2 := "notfound"
				if err == nil {
					inL2 = fmt.Sprint("ok ", v)
				} else if !errors.Is(err, tiered.ErrNotFound) {
					t.Fatal(err)
				}
				stale := inL1 == "ok 1" || inL2 == "ok 1"
				t.Logf("after B's load: B's L1 %q, L2 %q", inL1, inL2)
				switch {
				case fenced && stale:
					t.Errorf("stale v1 installed: B's L1 %q, L2 %q", inL1, inL2)
				case !fenced && !stale:
					t.Errorf("without the fences v1 was not installed: the test does not reproduce the race")
				}
				if fenced {
					if r := b.do("load k"); r != "ok 2" {
						t.Errorf("B load k afterwards = %q, want 2", r)
					}
				}
			})
		}
	}
}

// TestTagsAcrossProcesses: InvalidateTags in A removes the tagged keys from
// L2 and from B's L1, leaves the others, and voids B's load of a tagged key
// in flight.
func TestTagsAcrossProcesses(t *testing.T) {
	ctx := context.Background()
	addr, ns := redistest.Addr(t), redistest.Namespace(t)
	raw := newClient(t)
	a := newIntCache(t, tiered.Config{Redis: newClient(t), Namespace: ns})
	b := startPeer(t, peerConfig{Addr: addr, Namespace: ns, Bound: 2 * time.Second})
	sets := []struct {
		key  string
		tags []string
	}{{"k1", []string{"red"}}, {"k2", []string{"red", "big"}}, {"k3", []string{"blue"}}}
	for i, s := range sets {
		if err := a.Set(ctx, s.key, int64(i+1), tiered.WithTags(s.tags...)); err != nil {
			t.Fatal(err)
		}
		if r := b.do("get %s", s.key); r != fmt.Sprint("ok ", i+1) {
			t.Fatalf("B get %s = %q", s.key, r)
		}
	}
	if err := a.InvalidateTags(ctx, "red"); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "k1 and k2 still in B's L1", func() bool {
		return b.do("peek k1") == "none" && b.do("peek k2") == "none"
	})
	for key, want := range map[string]string{"k1": "notfound", "k2": "notfound", "k3": "ok 3"} {
		if r := b.do("get %s", key); r != want {
			t.Errorf("B get %s after InvalidateTags(red) = %q, want %q", key, r, want)
		}
	}
	if n := raw.Exists(ctx, ns+":k1", ns+":k2").Val(); n != 0 {
		t.Errorf("%d of k1, k2 still in L2", n)
	}

	// A load of a tagged key in flight loses its lease to InvalidateTags.
	raw.Set(ctx, dbKey(ns, "k4"), 4, 0)
	t.Cleanup(func() { raw.Del(context.Background(), dbKey(ns, "k4")) })
	load := b.start("slowload k4 red")
	if r := b.recv(load); r != "loaded 4" {
		t.Fatalf("B's loader: %q", r)
	}
	if err := a.InvalidateTags(ctx, "red"); err != nil {
		t.Fatal(err)
	}
	b.do("release")
	if r := b.recv(load); r != "ok 4" {
		t.Fatalf("B's GetOrLoad = %q", r)
	}
	if n := raw.Exists(ctx, ns+":k4").Val(); n != 0 {
		t.Errorf("k4 written to L2 after InvalidateTags voided its lease")
	}
	if s := b.stats(); s.LeasesLost != 1 {
		t.Errorf("B LeasesLost = %d, want 1", s.LeasesLost)
	}
}

// TestL2ReadRacingDeleteIsFenced: a Get whose L2 read returns the old value
// after a Delete of the key in the same process does not install it.
func TestL2ReadRacingDeleteIsFenced(t *testing.T) {
	for _, fenced := range []bool{true, false} {
		t.Run(fmt.Sprintf("fenced=%v", fenced), func(t *testing.T) {
			ctx := context.Background()
			ns := redistest.Namespace(t)
			client := newClient(t)
			gate := &slowGet{key: ns + ":k", read: make(chan struct{}), release: make(chan struct{})}
			client.AddHook(gate)
			c := newIntCache(t, tiered.Config{Redis: client, Namespace: ns})
			if !fenced {
				tiered.DisableFences(c)
			}
			writer := newIntCache(t, tiered.Config{Redis: newClient(t), Namespace: ns, DisableInvalidation: true})
			if err := writer.Set(ctx, "k", 1); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				if v, err := c.Get(ctx, "k"); err != nil || v != 1 {
					t.Errorf("Get = %d, %v; want the value read, 1", v, err)
				}
			}()
			<-gate.read
			if err := c.Delete(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			close(gate.release)
			wg.Wait()
			_, _, inL1 := tiered.PeekL1(c, "k")
			if fenced && inL1 {
				t.Errorf("the value read before the Delete was installed in L1 after it")
			}
			if !fenced && !inL1 {
				t.Errorf("without the fence the old value was not installed: the test does not reproduce the race")
			}
		})
	}
}

// slowGet holds the first GET of key after Redis answered it, until release.
type slowGet struct {
	key           string
	once          sync.Once
	read, release chan struct{}
}

func (h *slowGet) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *slowGet) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if cmd.Name() == "get" && len(cmd.Args()) > 1 && cmd.Args()[1] == h.key {
			h.once.Do(func() {
				close(h.read)
				<-h.release
			})
		}
		return err
	}
}
func (h *slowGet) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
