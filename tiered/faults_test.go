package tiered_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

// TestStalenessBoundUnderRedisFaults: this process writes versioned values
// continuously (the database, then Set, Delete or InvalidateTags) while two
// reader processes read through their own L1s, all of them through a fault
// proxy in front of a Redis of the test's own; the database is another
// Redis that no fault touches. Under each fault, no read may see an older
// version than a write that returned nil when the read started more than
// the staleness bound after that write returned. A write that failed must
// be gone everywhere within the bound once its outbox has been replayed,
// which must happen soon after the fault ends.
//
// Half the keys are written only until the fault ends, so that their last
// write falls within it: with the mechanisms off (one attempt, the old
// 100 ms timeout, no outbox), their old values stay in L2 and the readers
// serve them, which is how the test shows that it can see what it checks.
func TestStalenessBoundUnderRedisFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute and a half of faults")
	}
	faults := []faultCase{
		{name: "refused", mechanism: true, fault: func(f *faultEnv, d time.Duration) {
			f.proxy.Refuse()
			f.during(d)
			f.proxy.Pass()
		}},
		{name: "frozen", mechanism: true, fault: func(f *faultEnv, d time.Duration) {
			f.srv.Freeze()
			f.during(d)
			f.srv.Thaw()
		}},
		{name: "slowed-200ms", mechanism: true, fault: func(f *faultEnv, d time.Duration) {
			f.proxy.Delay(200 * time.Millisecond)
			f.during(d)
			f.proxy.Delay(0)
		}},
		{name: "killed-restarted-empty", fault: func(f *faultEnv, _ time.Duration) {
			f.srv.Stop()
			f.during(3 * time.Second)
			if err := f.srv.Restart(); err != nil {
				f.t.Error(err)
			}
		}},
		{name: "three-300ms-stalls", mechanism: true, noFailures: true, fault: func(f *faultEnv, _ time.Duration) {
			for range 3 {
				f.proxy.Stall()
				f.during(300 * time.Millisecond)
				f.proxy.Pass()
				f.sleep(700 * time.Millisecond)
			}
		}},
	}
	// In parallel, two at a time by default (-parallel is GOMAXPROCS): each
	// has its own Redis, proxy and namespace, and much of a run is waiting.
	for _, fc := range faults {
		t.Run(fc.name, func(t *testing.T) {
			t.Parallel()
			r := runFault(t, fc, 10*time.Second, true)
			if r.violations > 0 {
				t.Errorf("%d reads older than the bound allows (first: %s)", r.violations, r.first)
			}
			if fc.noFailures && r.failed > 0 {
				t.Errorf("%d writes failed across stalls shorter than WriteTimeout, want none", r.failed)
			}
		})
		if !fc.mechanism {
			// Redis restarted empty holds nothing stale: nothing for the
			// outbox to undo, so nothing to show with it off.
			continue
		}
		t.Run(fc.name+"/mechanisms-off", func(t *testing.T) {
			t.Parallel()
			// A stale read needs a key whose last write failed, which the
			// short stalls make likely, not certain: up to three runs.
			for run := range 3 {
				var r faultResult
				t.Run(fmt.Sprint(run), func(t *testing.T) { r = runFault(t, fc, 3*time.Second, false) })
				if r.violations > 0 {
					return
				}
			}
			t.Errorf("no stale read in three runs with the retry and the outbox off: the test cannot see what it checks")
		})
	}
}

// readPace is how many µs apart a reader's reads are: a few thousand reads
// a second each are plenty, and leave the CPUs to the other runs.
const readPace = 200

type faultCase struct {
	name string
	// fault injects the fault for about d and ends it, calling during
	// for the spells in which the keys that are written only then are.
	fault func(f *faultEnv, d time.Duration)
	// mechanism: the retry and the outbox are what keep the bound under
	// this fault, so turning them off must show stale reads.
	mechanism bool
	// noFailures: the fault is shorter than WriteTimeout, so no write
	// may fail.
	noFailures bool
}

// faultEnv is one run's fault targets and the writer's phase.
type faultEnv struct {
	t      *testing.T
	srv    *redistest.Server
	proxy  *faultproxy.Proxy
	inside atomic.Bool // the fault is on: the keys written only then are written
}

// during keeps the fault on for d.
func (f *faultEnv) during(d time.Duration) {
	f.inside.Store(true)
	f.sleep(d)
	f.inside.Store(false)
}

// sleep is the fault's own pacing: faults are real time.
func (f *faultEnv) sleep(d time.Duration) { <-time.After(d) }

type faultResult struct {
	violations, failed int
	first              string
}

// faultWrite is one write by the test's process.
type faultWrite struct {
	ver      int64
	returned int64 // Unix ns
	failed   bool
}

// runFault runs one fault for d with the mechanisms on or off and checks
// the reads.
func runFault(t *testing.T, fc faultCase, d time.Duration, on bool) faultResult {
	ctx := context.Background()
	const (
		bound = 500 * time.Millisecond
		hot   = 10 // keys k0..k9, written throughout
		cold  = 10 // keys k10..k19, written until the fault ends
	)
	srv := redistest.Start(t)
	p := faultproxy.Start(t, srv.Addr)
	dbAddr, ns := redistest.Addr(t), redistest.Namespace(t)
	db := newClient(t)
	t.Cleanup(func() {
		for i := range hot + cold {
			db.Del(context.Background(), dbKey(ns, fmt.Sprintf("k%d", i)))
		}
	})
	for i := range hot + cold {
		if err := db.Set(ctx, dbKey(ns, fmt.Sprintf("k%d", i)), 0, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	url := "redis://" + p.Addr()
	cfg := tiered.Config{Namespace: ns, StalenessBound: bound}
	if !on {
		url += "?read_timeout=100ms&write_timeout=100ms"
		cfg.L2Timeout, cfg.WriteTimeout = 100*time.Millisecond, -1
	}
	rdb := libraryClient(t, url)
	cfg.Redis = rdb
	a := newIntCache(t, cfg)
	if !on {
		tiered.SetOutboxLimit(a, 0)
	}

	dir := t.TempDir()
	var readers []*peer
	var running []<-chan string
	for _, name := range []string{"b", "c"} {
		r := startPeer(t, peerConfig{URL: "redis://" + p.Addr(), DBAddr: dbAddr, Namespace: ns, Bound: bound})
		readers = append(readers, r)
		running = append(running, r.start("readloop %s %d tagged %d", filepath.Join(dir, name), hot+cold, readPace))
	}
	for _, r := range readers {
		eventually(t, 20*time.Second, "the reader reads", func() bool { s := r.stats(); return s.L1Hits+s.L1Misses > 0 })
	}

	f := &faultEnv{t: t, srv: srv, proxy: p}
	history := make(map[string][]faultWrite)
	vers := make(map[string]int64)
	var failed int
	write := func(key string, op int) {
		vers[key]++
		v := vers[key]
		if err := db.Set(ctx, dbKey(ns, key), v, 0).Err(); err != nil {
			t.Fatal(err)
		}
		var err error
		switch op {
		case 0:
			err = a.Set(ctx, key, v, tiered.WithTags("tag:"+key))
		case 1:
			err = a.Delete(ctx, key)
		default:
			err = a.InvalidateTags(ctx, "tag:"+key)
		}
		if err != nil {
			failed++
			if !errors.Is(err, tiered.ErrL2Unavailable) {
				t.Errorf("a failed write returned %v, want ErrL2Unavailable", err)
			}
		}
		history[key] = append(history[key], faultWrite{ver: v, returned: time.Now().UnixNano(), failed: err != nil})
	}
	// The writes, in phases: all keys for a while, the fault (cold keys
	// only while it is on), then hot keys only.
	faultDone := make(chan struct{})
	var healed atomic.Int64
	var phase sync.WaitGroup
	loop := func(until <-chan struct{}) {
		for i := 0; ; i++ {
			select {
			case <-until:
				return
			default:
			}
			key := fmt.Sprintf("k%d", rand.IntN(hot))
			op := rand.IntN(3)
			if i%2 == 1 && f.inside.Load() {
				// A cold key always takes the same kind of write, so that
				// each kind ends some key's history inside the fault.
				n := hot + rand.IntN(cold)
				key, op = fmt.Sprintf("k%d", n), n%3
			}
			write(key, op)
			time.Sleep(time.Duration(1+rand.IntN(3)) * time.Millisecond)
		}
	}
	warm := time.After(1500 * time.Millisecond)
	warmDone := make(chan struct{})
	go func() { <-warm; close(warmDone) }()
	// Before the fault, the cold keys get written too.
	for i := 0; ; i++ {
		select {
		case <-warmDone:
		default:
			key := fmt.Sprintf("k%d", rand.IntN(hot+cold))
			write(key, rand.IntN(3))
			time.Sleep(time.Duration(1+rand.IntN(3)) * time.Millisecond)
			continue
		}
		break
	}
	phase.Go(func() {
		fc.fault(f, d)
		healed.Store(time.Now().UnixNano())
		close(faultDone)
	})
	loop(faultDone)
	phase.Wait()
	// After the fault: hot keys only, until the outbox is replayed, then
	// 2 s more.
	var replayed int64
	after := time.After(10 * time.Second)
	for replayed == 0 {
		select {
		case <-after:
			t.Errorf("outbox still holds %d invalidations 10 s after the fault", a.Stats().OutboxHeld)
			replayed = time.Now().UnixNano()
			continue
		default:
		}
		if a.Stats().OutboxHeld == 0 {
			replayed = time.Now().UnixNano()
			break
		}
		write(fmt.Sprintf("k%d", rand.IntN(hot)), rand.IntN(3))
		time.Sleep(2 * time.Millisecond)
	}
	// Then on, with a new reader too, which has nothing in L1 (the others
	// keep what they loaded during the fault): stale entries left in L2
	// show there. Until it has read for a second, and 2 s at least.
	newcomer := startPeer(t, peerConfig{URL: "redis://" + p.Addr(), DBAddr: dbAddr, Namespace: ns, Bound: bound})
	readers = append(readers, newcomer)
	running = append(running, newcomer.start("readloop %s %d tagged %d", filepath.Join(dir, "d"), hot+cold, readPace))
	end := make(chan struct{})
	go func() {
		defer close(end)
		f.sleep(2 * time.Second)
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); f.sleep(100 * time.Millisecond) {
			if s := newcomer.stats(); s.L2Hits > 100 {
				f.sleep(time.Second)
				return
			}
		}
		t.Errorf("the new reader did not read L2 within 17 s of the fault's end")
	}()
	loop(end)
	for i, r := range readers {
		r.do("stopread")
		if res := r.recv(running[i]); !strings.HasPrefix(res, "ok ") {
			t.Fatalf("reader: %s", res)
		}
	}

	res := faultResult{failed: failed}
	reads := 0
	for _, name := range []string{"b", "c", "d"} {
		fh, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			if len(fl) != 3 || fl[2] == "err" {
				continue
			}
			reads++
			start, _ := strconv.ParseInt(fl[1], 10, 64)
			ver, _ := strconv.ParseInt(fl[2], 10, 64)
			for _, w := range history[fl[0]] {
				if w.ver <= ver {
					continue
				}
				since := w.returned
				if w.failed {
					since = max(since, replayed)
				}
				if start > since+int64(bound) {
					if res.violations++; res.violations == 1 {
						res.first = fmt.Sprintf("%s read %s version %d at +%v, version %d returned (failed %v) %v before",
							name, fl[0], ver, time.Duration(start-healed.Load()), w.ver, w.failed, time.Duration(start-w.returned))
					}
					break
				}
			}
		}
		fh.Close()
	}
	writes := 0
	for _, h := range history {
		writes += len(h)
	}
	s := a.Stats()
	t.Logf("%s, mechanisms on %v: %d writes (%d failed), %d reads, %d beyond the bound; outbox replayed %v after the fault; writer: %d retries, %d replays, breaker %s",
		fc.name, on, writes, failed, reads, res.violations, time.Duration(replayed-healed.Load()), s.WriteRetries, s.OutboxReplays, s.Breaker)
	if reads < 1000 {
		t.Errorf("only %d reads: the readers did not run", reads)
	}
	return res
}
