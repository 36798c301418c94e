package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

// TestWriteAnswersPendingWhileRedisRefuses: with Redis refusing for longer
// than the caches' WriteTimeout, a write still reaches the database and
// answers 503, Retry-After, Cache-Invalidation: pending and the product;
// once Redis is back and the outbox has replayed, the other replica serves
// the new version.
func TestWriteAnswersPendingWhileRedisRefuses(t *testing.T) {
	srv := redistest.Start(t)
	p := faultproxy.Start(t, srv.Addr)
	rs := startReplicasURL(t, 2, testPostgres(t), "redis://"+p.Addr(), Config{WriteRate: -1})
	a, b := rs[0], rs[1]
	for _, id := range []int{3, 4} {
		if _, res := b.product(t, id); res.StatusCode != http.StatusOK {
			t.Fatalf("GET %d: %d", id, res.StatusCode)
		}
	}
	p.Refuse()
	pending := func(what string, res *http.Response, body []byte) Product {
		t.Helper()
		if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Retry-After") != "1" || res.Header.Get("Cache-Invalidation") != "pending" {
			t.Fatalf("%s with Redis refusing: %d, Retry-After %q, Cache-Invalidation %q; want 503, 1, pending",
				what, res.StatusCode, res.Header.Get("Retry-After"), res.Header.Get("Cache-Invalidation"))
		}
		var got Product
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("%s: %v in %q", what, err, body)
		}
		return got
	}
	res, body := a.do(t, http.MethodPut, "/products/3", map[string]int{"stock": 42})
	if got := pending("PUT", res, body); got.ID != 3 || got.Version != 2 || got.Stock != 42 {
		t.Errorf("PUT body %+v, want product 3 version 2 with stock 42", got)
	}
	res, body = a.do(t, http.MethodPost, "/products", map[string]string{"name": "Made in an outage", "category": "toys"})
	created := pending("POST", res, body)
	if loc := res.Header.Get("Location"); created.ID == 0 || loc != fmt.Sprintf("/products/%d", created.ID) {
		t.Errorf("POST: product %d, Location %q", created.ID, loc)
	}
	res, body = a.do(t, http.MethodDelete, "/products/4", nil)
	if got := pending("DELETE", res, body); got.ID != 4 {
		t.Errorf("DELETE body %+v, want product 4", got)
	}
	p.Pass()
	eventuallyT(t, 5*time.Second, "a's outboxes replay", func() bool {
		return a.app.products.Stats().OutboxHeld+a.app.pages.Stats().OutboxHeld == 0
	})
	eventuallyT(t, 3*time.Second, "b serves the writes", func() bool {
		p3, _ := b.product(t, 3)
		_, r4 := b.product(t, 4)
		made, rNew := b.product(t, created.ID)
		return p3.Version == 2 && r4.StatusCode == http.StatusNotFound && rNew.StatusCode == http.StatusOK && made.Name == "Made in an outage"
	})
}

// TestCatalogWritesUnderRedisFaults: three replicas on PostgreSQL, whose
// Redis clients have the library's default options and go through a fault
// proxy to a Redis of the test's own. Writers PUT new versions of 20
// products, round-robin over the replicas, while readers GET them on every
// replica; each fault below lasts about 10 s. Under each:
//
//   - no GET answers 5xx or fails;
//   - no GET sees an older version than a PUT that answered 2xx, when it
//     started more than faultBound after that PUT returned;
//   - a PUT that answered 503 with Cache-Invalidation: pending holds from
//     the first moment after it at which no replica's outbox (product and
//     page cache) holds anything: no GET that starts more than faultBound
//     after that moment sees an older version.
//
// Products 11 to 20 are written only while the fault is on, so that their
// last write falls within it and an invalidation that was lost leaves
// their old entries in L2. The replicas' L1s keep what they loaded from
// the database during the fault, which would hide those entries; a fourth
// replica, started once the outboxes are empty, reads through an empty L1.
//
// That the checks can see a lost invalidation is shown by running this
// test on the library before the outbox (commit 98e0f0c, where a failed
// write returned nil after one attempt); see docs/catalog.md.
func TestCatalogWritesUnderRedisFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute and a half of faults")
	}
	const d = 10 * time.Second
	faults := []struct {
		name string
		// fault injects the fault and ends it, calling during for the
		// spells in which products 11 to 20 are written.
		fault func(f *faultRun)
		// down: Redis does not answer for longer than WriteTimeout, so
		// some PUTs must be pending.
		down bool
	}{
		{"refused", func(f *faultRun) { f.proxy.Refuse(); f.during(d); f.proxy.Pass() }, true},
		{"frozen", func(f *faultRun) { f.srv.Freeze(); f.during(d); f.srv.Thaw() }, true},
		{"slowed-200ms", func(f *faultRun) { f.proxy.Delay(200 * time.Millisecond); f.during(d); f.proxy.Delay(0) }, true},
		{"killed-restarted-empty", func(f *faultRun) {
			f.srv.Stop()
			f.during(d)
			if err := f.srv.Restart(); err != nil {
				f.t.Error(err)
			}
		}, true},
		{"three-300ms-stalls", func(f *faultRun) {
			for range 3 {
				// Products 11-20 from 100 ms before the stall: a PUT that
				// starts during it is rare, since every writer is then
				// waiting for the one it sent before.
				f.inside.Store(true)
				wait(100 * time.Millisecond)
				f.proxy.Stall()
				wait(300 * time.Millisecond)
				f.proxy.Pass()
				f.inside.Store(false)
				wait(600 * time.Millisecond)
			}
		}, false},
	}
	for _, fc := range faults {
		t.Run(fc.name, func(t *testing.T) {
			r := runCatalogFault(t, fc.fault)
			t.Logf("PUTs 2xx %d, pending %d, other %d (%d of products 11-20); GETs %d (%d on the new replica), 5xx %d, transport errors %d, "+
				"stale past the bound %d (%d on the new replica); outboxes empty %v after the fault",
				r.puts[putOK], r.puts[putPending], r.puts[putOther], r.coldPuts, r.reads, r.freshReads, r.read5xx, r.readErrors,
				r.stale, r.freshStale, r.drained.Round(time.Millisecond))
			if r.read5xx+r.readErrors > 0 {
				t.Errorf("%d GETs answered 5xx and %d failed, want none (first: %s)", r.read5xx, r.readErrors, r.firstError)
			}
			if r.stale > 0 {
				t.Errorf("%d GETs older than the bound allows (first: %s)", r.stale, r.firstStale)
			}
			if r.puts[putOther] > 0 {
				t.Errorf("%d PUTs answered neither 2xx nor pending (first: %s)", r.puts[putOther], r.firstOther)
			}
			if fc.down && r.puts[putPending] == 0 {
				t.Errorf("no PUT answered pending while Redis was down: the test did not see the outbox at work")
			}
			if r.coldPuts == 0 || r.freshReads == 0 {
				t.Errorf("%d PUTs of products 11-20 during the fault, %d checked GETs on the new replica: want some of each", r.coldPuts, r.freshReads)
			}
		})
	}
}

// faultBound is the catalog's bound for a write, from the moment that
// counts (a 2xx PUT's return, or the outboxes emptying after a pending
// one): the product cache's Delete ends every replica's copy within
// tiered's StalenessBound (2 s), and so does the page purge, except for a
// page that a GET which read before the write stored after the purge;
// the purge repeated secondPurgeAfter (500 ms) later removes that one,
// within StalenessBound again.
const faultBound = secondPurgeAfter + 2*time.Second

// faultRun is one run's fault targets and the writers' phase.
type faultRun struct {
	t      *testing.T
	srv    *redistest.Server
	proxy  *faultproxy.Proxy
	inside atomic.Bool // the fault is on: products 11-20 are written
}

// during keeps the fault on for d.
func (f *faultRun) during(d time.Duration) {
	f.inside.Store(true)
	wait(d)
	f.inside.Store(false)
}

// wait is the faults' own pacing: faults are real time.
func wait(d time.Duration) { <-time.After(d) }

// PUT outcomes.
const (
	putOK = iota
	putPending
	putOther
)

// faultPut is one PUT: the version it wrote (for 2xx and pending) and when
// its answer had arrived.
type faultPut struct {
	id, ver  int
	outcome  int
	returned time.Time
}

// faultRead is one GET: when it was sent, on which replica, and what it
// saw (status 0: no answer).
type faultRead struct {
	id, ver, status int
	start           time.Time
	fresh           bool // on the replica started after the fault
	err             string
}

type faultResult struct {
	puts                       [3]int
	coldPuts                   int
	reads, freshReads          int
	read5xx, readErrors, stale int
	freshStale                 int           // of stale, on the new replica
	drained                    time.Duration // from the fault's end to the outboxes' emptying
	firstError, firstStale     string
	firstOther                 string
}

const (
	hotProducts  = 10 // products 1-10, written throughout
	coldProducts = 10 // products 11-20, written while the fault is on
)

// runCatalogFault runs one fault under the writers and readers and checks
// the reads against the PUTs.
func runCatalogFault(t *testing.T, fault func(f *faultRun)) faultResult {
	dbURL := testPostgres(t)
	srv := redistest.Start(t)
	proxy := faultproxy.Start(t, srv.Addr)
	redisURL := "redis://" + proxy.Addr() // the library's client options
	rs := startReplicasURL(t, 3, dbURL, redisURL, Config{WriteRate: -1})
	f := &faultRun{t: t, srv: srv, proxy: proxy}

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 16
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	// The outboxes, sampled every 10 ms: the end of each sample that found
	// all of them empty, with its start.
	var drainMu sync.Mutex
	var empties [][2]time.Time
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			begin, held := time.Now(), int64(0)
			for _, r := range rs {
				held += r.app.products.Stats().OutboxHeld + r.app.pages.Stats().OutboxHeld
			}
			if held == 0 {
				drainMu.Lock()
				empties = append(empties, [2]time.Time{begin, time.Now()})
				drainMu.Unlock()
			}
		}
	})

	// Readers: three per replica, each product at random.
	var readMu sync.Mutex
	var reads []faultRead
	// freshChecked counts the new replica's answered GETs sent from
	// checkFrom (Unix ns) on, for the run to wait until there are enough.
	var checkFromNS, freshChecked atomic.Int64
	readers := func(r *replica, fresh bool) {
		for g := range 3 {
			bg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
				var mine []faultRead
				defer func() { readMu.Lock(); reads = append(reads, mine...); readMu.Unlock() }()
				for {
					select {
					case <-stop:
						return
					default:
					}
					rd := faultRead{id: 1 + rng.IntN(hotProducts+coldProducts), start: time.Now(), fresh: fresh}
					rd.status, rd.ver, rd.err = getVersion(client, r.srv.URL, rd.id)
					mine = append(mine, rd)
					if at := checkFromNS.Load(); fresh && at != 0 && rd.start.UnixNano() >= at && rd.status == http.StatusOK {
						freshChecked.Add(1)
					}
				}
			})
		}
	}
	for _, r := range rs {
		readers(r, false)
	}

	// Writers: three, each round-robin over the replicas.
	const (
		phaseBefore = iota // every product
		phaseFault         // products 1-10, and 11-20 while the fault is on
		phaseAfter         // products 1-10
	)
	var phase atomic.Int32
	var putMu sync.Mutex
	var puts []faultPut
	var writers sync.WaitGroup
	stopWrites := make(chan struct{})
	for w := range 3 {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			var mine []faultPut
			defer func() { putMu.Lock(); puts = append(puts, mine...); putMu.Unlock() }()
			for i := 0; ; i++ {
				select {
				case <-stopWrites:
					return
				default:
				}
				id := 1 + rng.IntN(hotProducts)
				switch {
				case phase.Load() == phaseBefore:
					id = 1 + rng.IntN(hotProducts+coldProducts)
				case phase.Load() == phaseFault && f.inside.Load() && i%2 == 1:
					id = 1 + hotProducts + rng.IntN(coldProducts)
				}
				mine = append(mine, putVersion(client, rs[(w+i)%len(rs)].srv.URL, id, i))
			}
		})
	}

	wait(1500 * time.Millisecond) // every product written and read, so in L2
	began := time.Now()
	phase.Store(phaseFault)
	fault(f)
	healed := time.Now()
	phase.Store(phaseAfter)
	drainedAt := func(after time.Time) (time.Time, bool) {
		drainMu.Lock()
		defer drainMu.Unlock()
		i := sort.Search(len(empties), func(i int) bool { return !empties[i][0].Before(after) })
		if i == len(empties) {
			return time.Time{}, false
		}
		return empties[i][1], true
	}
	var drained time.Time
	for deadline := time.Now().Add(15 * time.Second); ; wait(10 * time.Millisecond) {
		var ok bool
		if drained, ok = drainedAt(healed); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the outboxes still hold invalidations 15 s after the fault")
		}
	}
	// A replica with nothing in L1: what L2 holds shows there.
	fresh := startReplicasURL(t, 1, dbURL, redisURL, Config{WriteRate: -1, Namespace: rs[0].app.cfg.Namespace})[0]
	readers(fresh, true)
	checkFrom := drained.Add(faultBound)
	checkFromNS.Store(checkFrom.UnixNano())
	wait(time.Until(checkFrom) + 2*time.Second)
	// A GET of the new replica may wait on another replica's lease: wait
	// for enough checked answers rather than for a time.
	for deadline := time.Now().Add(15 * time.Second); freshChecked.Load() < 100 && time.Now().Before(deadline); {
		wait(50 * time.Millisecond)
	}
	close(stopWrites)
	writers.Wait()
	close(stop)
	bg.Wait()

	// Each PUT's deadline: reads of an older version must start before it.
	res := faultResult{drained: drained.Sub(healed)}
	byID := make(map[int][]faultPut)
	for _, p := range puts {
		res.puts[p.outcome]++
		if p.outcome == putOther {
			if res.firstOther == "" {
				res.firstOther = fmt.Sprintf("product %d at +%v", p.id, p.returned.Sub(healed))
			}
			continue
		}
		if p.id > hotProducts && p.returned.After(began) {
			res.coldPuts++
		}
		byID[p.id] = append(byID[p.id], p)
	}
	earliest := make(map[int][]time.Time)
	for id, ps := range byID {
		slices.SortFunc(ps, func(a, b faultPut) int { return a.ver - b.ver })
		// earliest[id][i]: the earliest deadline among the PUTs of id from
		// the i-th version on.
		e := make([]time.Time, len(ps))
		for i := len(ps) - 1; i >= 0; i-- {
			at := ps[i].returned
			if ps[i].outcome == putPending {
				var ok bool
				if at, ok = drainedAt(at); !ok {
					at = time.Unix(1<<40, 0) // not drained when the run ended: nothing to check
				}
			}
			e[i] = at.Add(faultBound)
			if i+1 < len(ps) && e[i+1].Before(e[i]) {
				e[i] = e[i+1]
			}
		}
		earliest[id] = e
	}
	for _, rd := range reads {
		if rd.fresh && !rd.start.Before(checkFrom) {
			res.freshReads++
		}
		res.reads++
		switch {
		case rd.status == 0 || rd.status >= 500:
			if rd.status == 0 {
				res.readErrors++
			} else {
				res.read5xx++
			}
			if res.firstError == "" {
				res.firstError = fmt.Sprintf("GET /products/%d at +%v: %d %s", rd.id, rd.start.Sub(healed), rd.status, rd.err)
			}
			continue
		case rd.status != http.StatusOK:
			continue
		}
		ps := byID[rd.id]
		i := sort.Search(len(ps), func(i int) bool { return ps[i].ver > rd.ver })
		if i < len(ps) && earliest[rd.id][i].Before(rd.start) {
			if rd.fresh {
				res.freshStale++
			}
			if res.stale++; res.stale == 1 {
				res.firstStale = fmt.Sprintf("GET /products/%d (new replica %v) at +%v saw version %d; version %d (%s) returned at +%v",
					rd.id, rd.fresh, rd.start.Sub(healed), rd.ver, ps[i].ver, outcomeName[ps[i].outcome], ps[i].returned.Sub(healed))
			}
		}
	}
	return res
}

var outcomeName = [...]string{putOK: "2xx", putPending: "pending", putOther: "other"}

// getVersion GETs product id and returns the status and the version seen
// (status 0: no answer, err says why).
func getVersion(client *http.Client, base string, id int) (status, ver int, err string) {
	res, e := client.Get(fmt.Sprintf("%s/products/%d", base, id))
	if e != nil {
		return 0, 0, e.Error()
	}
	defer res.Body.Close()
	var p Product
	if res.StatusCode == http.StatusOK {
		if e := json.NewDecoder(res.Body).Decode(&p); e != nil {
			return 0, 0, e.Error()
		}
	}
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode, p.Version, ""
}

// putVersion PUTs a new stock level to product id and returns what the
// answer says.
func putVersion(client *http.Client, base string, id, stock int) faultPut {
	p := faultPut{id: id, outcome: putOther}
	req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/products/%d", base, id), strings.NewReader(fmt.Sprintf(`{"stock":%d}`, stock)))
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		p.returned = time.Now()
		return p
	}
	defer res.Body.Close()
	var got Product
	decodeErr := json.NewDecoder(res.Body).Decode(&got)
	p.returned = time.Now()
	switch {
	case decodeErr != nil || got.ID != id:
	case res.StatusCode == http.StatusOK:
		p.outcome, p.ver = putOK, got.Version
	case invalidationIsPending(res):
		p.outcome, p.ver = putPending, got.Version
	}
	return p
}
