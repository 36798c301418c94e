package main

// The load generator: `example-catalog loadgen -h`. It drives one or more
// replicas with a Zipf-distributed mix of product reads, list pages and
// writes, records every latency, and reads each replica's
// /debug/cache.json before and after to tell which tier answered. With
// -sweep-l1 it instead starts an in-process replica per L1 size and plots
// the hit ratios against the size.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tiercache/tiercache/tiered"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// loadConfig is one run of the load generator. Every field must be set
// (see validate); the flags hold the defaults.
type loadConfig struct {
	Targets     []string      // base URLs of the replicas, e.g. http://127.0.0.1:8080
	Duration    time.Duration // how long to send requests
	Requests    int           // stop after this many, if sooner than Duration; 0: no limit
	Concurrency int           // workers, each with one request in flight
	Products    int           // product ids are 1..Products
	Zipf        float64       // exponent s of the id distribution; 0 is uniform
	WriteRatio  float64       // fraction of requests that are PUTs
	ListRatio   float64       // fraction of reads that are list pages
	Seed        uint64        // makes the request sequence of each worker repeatable
	Progress    time.Duration // interval of the progress line; 0: none
	ProgressTo  io.Writer     // where the progress line goes; nil: nowhere
}

func (c loadConfig) validate() error {
	switch {
	case len(c.Targets) == 0:
		return errors.New("no targets")
	case c.Duration <= 0:
		return errors.New("duration must be positive")
	case c.Requests < 0:
		return errors.New("requests must not be negative")
	case c.Concurrency < 1:
		return errors.New("concurrency must be at least 1")
	case c.Products < 1:
		return errors.New("products must be at least 1")
	case c.Zipf < 0 || math.IsNaN(c.Zipf) || math.IsInf(c.Zipf, 0):
		return errors.New("zipf must be a finite number >= 0")
	case !(c.WriteRatio >= 0 && c.WriteRatio <= 1):
		return errors.New("write-ratio must be in [0, 1]")
	case !(c.ListRatio >= 0 && c.ListRatio <= 1):
		return errors.New("list-ratio must be in [0, 1]")
	case c.Progress < 0:
		return errors.New("progress must not be negative")
	}
	for _, t := range c.Targets {
		u, err := url.Parse(t)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("target %q: want http://host:port", t)
		}
	}
	return nil
}

// statusCounts sorts the responses by what they mean for a cache
// benchmark: 304s are revalidations, 404s deleted or unknown ids, 429s
// writes refused by the rate limiter, and pending writes those that the
// database has but whose cache invalidation waits for Redis (503 with
// Cache-Invalidation: pending, see invalidationPending): not a failure.
type statusCounts struct {
	OK          int64 `json:"2xx"`
	NotModified int64 `json:"304"`
	NotFound    int64 `json:"404"`
	TooMany     int64 `json:"429"`
	Pending     int64 `json:"pending"`
	Other       int64 `json:"other"`            // 1xx, other 3xx and 4xx
	Server      int64 `json:"5xx"`              // other than pending writes
	Transport   int64 `json:"transport_errors"` // no response at all
}

// loadReport is what a run measured. The ratios are in [0, 1], or -1 when
// they could not be measured: no replica's /debug/cache.json answered, or
// the tier saw no traffic (L2 without Redis).
type loadReport struct {
	Requests   int64         `json:"requests"`
	Reads      int64         `json:"reads"`
	Writes     int64         `json:"writes"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	Throughput float64       `json:"throughput"` // requests per second
	P50        time.Duration `json:"p50_ns"`
	P90        time.Duration `json:"p90_ns"`
	P99        time.Duration `json:"p99_ns"`
	Max        time.Duration `json:"max_ns"`
	// ReadP99 is the p99 of reads alone: during a Redis outage a write
	// waits up to the cache's WriteTimeout before it answers pending.
	ReadP99 time.Duration `json:"read_p99_ns"`
	Status  statusCounts  `json:"status"`

	HitHTTP         float64 `json:"hit_http"` // the HTTP response cache
	HitL1           float64 `json:"hit_l1"`   // the product cache's L1
	HitL2           float64 `json:"hit_l2"`   // the product cache's L2, of the L1 misses
	DBQueriesPerSec float64 `json:"db_queries_per_sec"`
	ReadsWithoutDB  float64 `json:"reads_without_db"`
	// L2Errors, BreakerOpens and L1Flushes are the caches' (both, every
	// replica measured) during the run: on a healthy Redis all three should
	// stay 0, whatever the load.
	L2Errors     int64    `json:"l2_errors"`
	BreakerOpens int64    `json:"breaker_opens"`
	L1Flushes    int64    `json:"l1_flushes"`
	StatsErrors  []string `json:"stats_errors,omitempty"` // replicas whose counters are missing from the ratios
}

// failed reports whether a replica failed a request, which is what the
// exit status tells scripts.
func (r loadReport) failed() bool { return r.Status.Server > 0 || r.Status.Transport > 0 }

// loadgenFlags is the command line: a run against the targets, or a
// sweep when sweep.Sizes is set.
type loadgenFlags struct {
	load  loadConfig
	sweep sweepConfig
	json  bool
}

func runLoadgen(args []string) int {
	f, err := parseLoadgenFlags(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(f.sweep.Sizes) > 0 {
		return sweepMain(ctx, f.load, f.sweep)
	}
	return loadMain(ctx, f.load, f.json)
}

// parseLoadgenFlags parses and checks args; it prints what is wrong
// itself.
func parseLoadgenFlags(args []string) (loadgenFlags, error) {
	fs := flag.NewFlagSet("example-catalog loadgen", flag.ContinueOnError)
	targets := fs.String("targets", "http://127.0.0.1:8080", "comma-separated base URLs of the replicas; requests go round-robin")
	duration := fs.Duration("duration", 30*time.Second, "how long to send requests")
	requests := fs.Int("requests", 0, "stop after this many requests, if sooner than -duration; 0: no limit")
	concurrency := fs.Int("concurrency", 32, "workers, each with one request in flight")
	products := fs.Int("products", 10_000, "product ids to request: 1..N")
	zipfS := fs.Float64("zipf", 1.0, "Zipf exponent s of the product ids (0: uniform)")
	writeRatio := fs.Float64("write-ratio", 0.01, "fraction of requests that are writes (PUT /products/{id})")
	listRatio := fs.Float64("list-ratio", 0.05, "fraction of reads that are list pages")
	seed := fs.Uint64("seed", 1, "random seed of the request sequence")
	progress := fs.Duration("progress", time.Second, "interval of the progress line on stderr; 0: none")
	asJSON := fs.Bool("json", false, "also print the report as JSON")
	sweep := fs.String("sweep-l1", "", "comma-separated L1 sizes (e.g. 256KiB,1MiB,4MiB): measure an in-process replica at each instead of -targets")
	sweepDuration := fs.Duration("sweep-duration", 10*time.Second, "measured time per sweep point (a warm-up of a fifth of it comes first)")
	plotPath := fs.String("plot", "hit-ratio.png", "PNG file for the sweep's plot")
	dbURL := fs.String("db", "", "database of the sweep's replicas: postgres://… or sqlite:<path>; empty for SQLite in the temp dir")
	if err := fs.Parse(args); err != nil {
		return loadgenFlags{}, err
	}
	f := loadgenFlags{
		load: loadConfig{
			Targets: splitList(*targets), Duration: *duration, Requests: *requests, Concurrency: *concurrency, Products: *products,
			Zipf: *zipfS, WriteRatio: *writeRatio, ListRatio: *listRatio, Seed: *seed,
			Progress: *progress, ProgressTo: os.Stderr,
		},
		sweep: sweepConfig{
			Duration: *sweepDuration, DatabaseURL: *dbURL, Plot: *plotPath,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		},
		json: *asJSON,
	}
	err := f.load.validate()
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err == nil && *sweep != "" {
		f.sweep.Sizes, err = parseSizes(*sweep)
		if err == nil && *sweepDuration <= 0 {
			err = errors.New("sweep-duration must be positive")
		}
	}
	if err != nil {
		fmt.Fprintln(fs.Output(), "loadgen:", err)
		fs.Usage()
	}
	return f, err
}

// loadMain runs the load against the targets and prints the report.
func loadMain(ctx context.Context, cfg loadConfig, asJSON bool) int {
	fmt.Printf("loadgen: %v against %s, %d workers, %d products, Zipf s=%g, writes %g%%, list pages %g%% of reads\n",
		cfg.Duration, strings.Join(cfg.Targets, ", "), cfg.Concurrency, cfg.Products, cfg.Zipf, 100*cfg.WriteRatio, 100*cfg.ListRatio)
	r, err := runLoad(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		return 1
	}
	r.print(os.Stdout)
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			return 1
		}
	}
	if r.failed() {
		return 1
	}
	return 0
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, strings.TrimSuffix(f, "/"))
		}
	}
	return out
}

// Status classes, the indexes of loader.status.
const (
	class2xx = iota
	class304
	class404
	class429
	classPending
	classOther
	class5xx
	classTransport
	numClasses
)

func classify(code int, pending bool, err error) int {
	switch {
	case err != nil:
		return classTransport
	case pending:
		return classPending
	case code == http.StatusNotModified:
		return class304
	case code == http.StatusNotFound:
		return class404
	case code == http.StatusTooManyRequests:
		return class429
	case code >= 500:
		return class5xx
	case code >= 200 && code < 300:
		return class2xx
	}
	return classOther
}

// loader is the state of one run, shared by the workers and the progress
// line; hence every counter is atomic.
type loader struct {
	cfg      loadConfig
	client   *http.Client
	ids      zipf
	lat      latencyHist
	readLat  latencyHist
	status   [numClasses]atomic.Int64
	requests atomic.Int64
	issued   atomic.Int64 // requests begun, for cfg.Requests
	reads    atomic.Int64
	writes   atomic.Int64
	// dbWrites counts the writes that reached the database, so that their
	// queries are not taken for reads that missed every cache.
	dbWrites atomic.Int64
}

// runLoad sends requests to cfg.Targets for cfg.Duration (or cfg.Requests
// of them, if that comes first), or until ctx ends, and reports what it measured, including the per-tier hit ratios
// from the replicas' /debug/cache.json.
func runLoad(ctx context.Context, cfg loadConfig) (loadReport, error) {
	if err := cfg.validate(); err != nil {
		return loadReport{}, err
	}
	// One client for every worker, with an idle connection per worker and
	// target: with the default two per host, most requests would open a
	// new connection and measure the TCP handshake rather than the cache.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = cfg.Concurrency
	tr.MaxIdleConns = cfg.Concurrency * len(cfg.Targets)
	defer tr.CloseIdleConnections()
	l := &loader{cfg: cfg, client: &http.Client{Transport: tr, Timeout: 30 * time.Second}, ids: newZipf(cfg.Products, cfg.Zipf)}

	before, beforeErrs := l.debugStats(ctx, "at the start")
	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		l.reportProgress(runCtx, start)
	}()
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Go(func() { l.work(runCtx, w) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	cancel()
	<-progressDone
	// The run may have ended by a signal: the counters are still worth
	// reading.
	after, afterErrs := l.debugStats(context.WithoutCancel(ctx), "at the end")
	return l.report(elapsed, before, after, append(beforeErrs, afterErrs...)), nil
}

// work sends requests until ctx ends.
func (l *loader) work(ctx context.Context, worker int) {
	rng := rand.New(rand.NewPCG(l.cfg.Seed, uint64(worker)))
	next := worker // spreads the workers over the targets from the first request
	for ctx.Err() == nil {
		if l.cfg.Requests > 0 && l.issued.Add(1) > int64(l.cfg.Requests) {
			return
		}
		target := l.cfg.Targets[next%len(l.cfg.Targets)]
		next++
		req, write := l.newRequest(ctx, rng, target)
		start := time.Now()
		code, pending, err := l.do(req)
		if err != nil && ctx.Err() != nil {
			return // cut off by the end of the run, not the replica's failure
		}
		took := time.Since(start)
		l.lat.record(took)
		l.requests.Add(1)
		l.status[classify(code, pending, err)].Add(1)
		if !write {
			l.readLat.record(took)
			l.reads.Add(1)
			continue
		}
		l.writes.Add(1)
		// The update's query runs for a 2xx, a pending write and a 404 (no
		// such id); a 400 or a 429 is answered before it.
		if err == nil && (code < 300 || pending || code == http.StatusNotFound) {
			l.dbWrites.Add(1)
		}
	}
}

func (l *loader) newRequest(ctx context.Context, rng *rand.Rand, target string) (req *http.Request, write bool) {
	var err error
	switch {
	case rng.Float64() < l.cfg.WriteRatio:
		body := fmt.Sprintf(`{"stock":%d}`, rng.IntN(1000))
		req, err = http.NewRequestWithContext(ctx, http.MethodPut, target+"/products/"+strconv.Itoa(l.ids.draw(rng)), strings.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
		}
		write = true
	case rng.Float64() < l.cfg.ListRatio:
		q := url.Values{"category": {categories[rng.IntN(len(categories))]}, "page": {strconv.Itoa(1 + rng.IntN(5))}}
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, target+"/products?"+q.Encode(), nil)
	default:
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, target+"/products/"+strconv.Itoa(l.ids.draw(rng)), nil)
	}
	if err != nil {
		panic(err) // the targets were validated: a bad URL here is a bug
	}
	return req, write
}

// do sends req and reads the whole body, which both counts in the
// latency and lets the connection be reused; pending reports a write
// whose cache invalidation is pending.
func (l *loader) do(req *http.Request) (code int, pending bool, err error) {
	resp, err := l.client.Do(req)
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, false, err
	}
	return resp.StatusCode, invalidationIsPending(resp), nil
}

// invalidationIsPending reports the answer of invalidationPending.
func invalidationIsPending(resp *http.Response) bool {
	return resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Cache-Invalidation") == "pending"
}

func (l *loader) reportProgress(ctx context.Context, start time.Time) {
	if l.cfg.Progress <= 0 || l.cfg.ProgressTo == nil {
		return
	}
	t := time.NewTicker(l.cfg.Progress)
	defer t.Stop()
	var last int64
	lastAt := start
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n := l.requests.Load()
			fmt.Fprintf(l.cfg.ProgressTo, "%6.1fs %9.0f req/s  p99 %-9v errors %d\n",
				now.Sub(start).Seconds(), float64(n-last)/now.Sub(lastAt).Seconds(),
				l.lat.quantile(0.99).Round(time.Microsecond),
				l.status[class5xx].Load()+l.status[classTransport].Load())
			last, lastAt = n, now
		}
	}
}

// debugStats reads /debug/cache.json from every target; a target that
// fails has a nil entry, and an error that names it.
func (l *loader) debugStats(ctx context.Context, when string) ([]*DebugStats, []error) {
	out := make([]*DebugStats, len(l.cfg.Targets))
	var errs []error
	for i, t := range l.cfg.Targets {
		s, err := fetchDebugStats(ctx, l.client, t)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", t, when, err))
			continue
		}
		out[i] = s
	}
	return out, errs
}

func fetchDebugStats(ctx context.Context, c *http.Client, target string) (*DebugStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target+"/debug/cache.json", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /debug/cache.json: %s", resp.Status)
	}
	var s DebugStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("GET /debug/cache.json: %w", err)
	}
	return &s, nil
}

// tierCounts are the counters behind the hit ratios, summed over the
// replicas.
type tierCounts struct {
	httpHits, httpMisses int64
	l1Hits, l1Misses     int64
	l2Hits, l2Misses     int64
	dbQueries            int64
	// What the caches went through: L2 errors, breaker openings, and
	// flushes of L1 (of both caches).
	l2Errors, breakerOpens, flushes int64
}

func (t *tierCounts) addDelta(before, after *DebugStats) {
	// A stale response is served from the cache too: it counts as a hit.
	t.httpHits += after.HTTP["hit"] + after.HTTP["stale"] - before.HTTP["hit"] - before.HTTP["stale"]
	t.httpMisses += after.HTTP["miss"] - before.HTTP["miss"]
	t.l1Hits += after.Products.L1Hits - before.Products.L1Hits
	t.l1Misses += after.Products.L1Misses - before.Products.L1Misses
	t.l2Hits += after.Products.L2Hits - before.Products.L2Hits
	t.l2Misses += after.Products.L2Misses - before.Products.L2Misses
	t.dbQueries += after.DB.Queries - before.DB.Queries
	for _, c := range [][2]tiered.Stats{{before.Products, after.Products}, {before.Pages, after.Pages}} {
		t.l2Errors += c[1].L2Errors - c[0].L2Errors
		t.breakerOpens += c[1].BreakerOpens - c[0].BreakerOpens
		t.flushes += c[1].Flushes - c[0].Flushes
	}
}

// ratio is hits/(hits+misses), or -1 without either.
func ratio(hits, misses int64) float64 {
	if hits+misses <= 0 {
		return -1
	}
	return float64(hits) / float64(hits+misses)
}

// report sums the counters of the replicas that answered both before and
// after; statsErrs says which did not.
func (l *loader) report(elapsed time.Duration, before, after []*DebugStats, statsErrs []error) loadReport {
	r := loadReport{
		Requests: l.requests.Load(), Reads: l.reads.Load(), Writes: l.writes.Load(), Elapsed: elapsed,
		P50: l.lat.quantile(0.50), P90: l.lat.quantile(0.90), P99: l.lat.quantile(0.99), Max: l.lat.max(),
		ReadP99: l.readLat.quantile(0.99),
		Status: statusCounts{
			OK: l.status[class2xx].Load(), NotModified: l.status[class304].Load(), NotFound: l.status[class404].Load(),
			TooMany: l.status[class429].Load(), Pending: l.status[classPending].Load(), Other: l.status[classOther].Load(),
			Server: l.status[class5xx].Load(), Transport: l.status[classTransport].Load(),
		},
		HitHTTP: -1, HitL1: -1, HitL2: -1, DBQueriesPerSec: -1, ReadsWithoutDB: -1,
	}
	r.Throughput = float64(r.Requests) / elapsed.Seconds()
	for _, err := range statsErrs {
		r.StatsErrors = append(r.StatsErrors, err.Error())
	}
	var sum tierCounts
	measured := 0
	for i := range l.cfg.Targets {
		if before[i] != nil && after[i] != nil {
			sum.addDelta(before[i], after[i])
			measured++
		}
	}
	if measured == 0 {
		return r
	}
	r.HitHTTP = ratio(sum.httpHits, sum.httpMisses)
	r.HitL1 = ratio(sum.l1Hits, sum.l1Misses)
	r.HitL2 = ratio(sum.l2Hits, sum.l2Misses)
	r.DBQueriesPerSec = float64(sum.dbQueries) / elapsed.Seconds()
	r.L2Errors, r.BreakerOpens, r.L1Flushes = sum.l2Errors, sum.breakerOpens, sum.flushes
	if r.Reads > 0 {
		// NOTE: with some replicas unmeasured this overstates the reads
		// that went without a query; the report lists them.
		readQueries := sum.dbQueries - l.dbWrites.Load()
		r.ReadsWithoutDB = min(1, max(0, 1-float64(readQueries)/float64(r.Reads)))
	}
	return r
}

func (r loadReport) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "requests\t%d (%d reads, %d writes) in %v\n", r.Requests, r.Reads, r.Writes, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(tw, "throughput\t%.0f req/s\n", r.Throughput)
	fmt.Fprintf(tw, "latency\tp50 %v  p90 %v  p99 %v  max %v\n", roundLatency(r.P50), roundLatency(r.P90), roundLatency(r.P99), roundLatency(r.Max))
	s := r.Status
	fmt.Fprintf(tw, "status\t2xx %d  304 %d  404 %d  429 %d  pending %d  other %d  5xx %d  transport errors %d\n",
		s.OK, s.NotModified, s.NotFound, s.TooMany, s.Pending, s.Other, s.Server, s.Transport)
	fmt.Fprintf(tw, "hit ratio\tHTTP responses %s  products L1 %s  products L2 %s\n", percent(r.HitHTTP), percent(r.HitL1), percent(r.HitL2))
	fmt.Fprintf(tw, "caches\tL2 errors %d  breaker openings %d  L1 flushes %d\n", r.L2Errors, r.BreakerOpens, r.L1Flushes)
	if r.DBQueriesPerSec >= 0 {
		fmt.Fprintf(tw, "database\t%.1f queries/s; %s of reads answered without a query\n", r.DBQueriesPerSec, percent(r.ReadsWithoutDB))
	} else {
		fmt.Fprintf(tw, "database\tn/a\n")
	}
	for _, e := range r.StatsErrors {
		fmt.Fprintf(tw, "no cache stats\t%s\n", e)
	}
	tw.Flush()
}

func roundLatency(d time.Duration) time.Duration {
	if d >= 10*time.Millisecond {
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func percent(r float64) string {
	if r < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f%%", 100*r)
}

// zipf draws product ids 1..n with P(k) proportional to 1/k^s. It keeps
// the cumulative distribution and searches it, because math/rand's Zipf
// needs s > 1 and the classic web-cache workload is s = 1. It is
// immutable, so safe for concurrent use (each caller brings its rand).
type zipf struct {
	cdf []float64
}

func newZipf(n int, s float64) zipf {
	cdf := make([]float64, n)
	sum := 0.0
	for k := range n {
		sum += math.Pow(float64(k+1), -s)
		cdf[k] = sum
	}
	for k := range cdf {
		cdf[k] /= sum
	}
	cdf[n-1] = 1 // no rounding gap above the last id
	return zipf{cdf: cdf}
}

func (z zipf) draw(r *rand.Rand) int {
	return sort.SearchFloat64s(z.cdf, r.Float64()) + 1
}

// latencyHist is a log-linear histogram of durations, like HdrHistogram
// with a precision of 1/64: exact below 128 ns, then 64 buckets per power
// of two. Every bucket is atomic, so that the progress line reads
// quantiles while the workers record; a sorted slice of every latency
// would need a lock or a copy for that.
type latencyHist struct {
	counts [58 * 64]atomic.Int64
	maxNS  atomic.Int64
}

// bucketOf is exact below 128 ns, then keeps the top 7 bits of ns.
func bucketOf(ns int64) int {
	if ns < 128 {
		return int(max(ns, 0))
	}
	shift := bits.Len64(uint64(ns)) - 7
	return shift*64 + int(ns>>shift)
}

// bucketMid is the middle of bucket i's range of durations.
func bucketMid(i int) time.Duration {
	if i < 128 {
		return time.Duration(i)
	}
	shift := i/64 - 1
	low := int64(i-shift*64) << shift
	return time.Duration(low + (int64(1)<<shift)/2)
}

func (h *latencyHist) record(d time.Duration) {
	ns := int64(d)
	h.counts[bucketOf(ns)].Add(1)
	for m := h.maxNS.Load(); ns > m && !h.maxNS.CompareAndSwap(m, ns); m = h.maxNS.Load() {
	}
}

func (h *latencyHist) max() time.Duration { return time.Duration(h.maxNS.Load()) }

// quantile returns the duration that a fraction q of the records do not
// exceed, within the bucket precision; 0 without records.
func (h *latencyHist) quantile(q float64) time.Duration {
	var total int64
	for i := range h.counts {
		total += h.counts[i].Load()
	}
	if total == 0 {
		return 0
	}
	rank := max(1, int64(math.Ceil(q*float64(total))))
	var seen int64
	for i := range h.counts {
		if seen += h.counts[i].Load(); seen >= rank {
			return min(bucketMid(i), h.max())
		}
	}
	return h.max() // records that arrived while we summed
}

// parseSize parses a byte count with an optional binary unit: 65536,
// 64KiB, 1.5MiB, 2GiB (the unit's case does not matter).
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"b", 1}}
	num, mult := strings.TrimSpace(s), 1.0
	for _, u := range units {
		if strings.HasSuffix(strings.ToLower(num), u.suffix) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || !(v*mult >= 1 && v*mult <= math.MaxInt64/2) {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with KiB, MiB or GiB", s)
	}
	return int64(math.Round(v * mult)), nil
}

func parseSizes(list string) ([]int64, error) {
	var out []int64
	for _, f := range splitList(list) {
		n, err := parseSize(f)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("sweep-l1: no sizes")
	}
	return out, nil
}

// formatSize writes n in the largest binary unit that keeps it readable.
func formatSize(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', -1, 64) + "GiB"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', -1, 64) + "MiB"
	case n >= 1<<10:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', -1, 64) + "KiB"
	}
	return strconv.FormatInt(n, 10) + "B"
}

// sweepConfig is an L1 size sweep: a fresh in-process replica per size,
// without Redis, so that L1 alone stands between the load and the
// database.
type sweepConfig struct {
	Sizes       []int64       // L1 budgets, each given to both caches
	Duration    time.Duration // measured per size, after a warm-up of a fifth of it
	DatabaseURL string        // see Config.DatabaseURL
	Plot        string        // PNG path; "": no plot
	Logger      *slog.Logger  // the replicas' logger; nil: discard
}

// sweepPoint is the measurement at one L1 size.
type sweepPoint struct {
	L1Bytes int64
	Report  loadReport
}

func sweepMain(ctx context.Context, cfg loadConfig, sc sweepConfig) int {
	fmt.Printf("loadgen: L1 sweep, %v per size, %d workers, %d products, Zipf s=%g, writes %g%%, list pages %g%% of reads\n",
		sc.Duration, cfg.Concurrency, cfg.Products, cfg.Zipf, 100*cfg.WriteRatio, 100*cfg.ListRatio)
	if cfg.WriteRatio > 0 {
		fmt.Println("NOTE: without Redis every write clears the HTTP cache's L1 (tiered.InvalidateTags has no tag index\n" +
			"without L2), so its hit ratio follows -write-ratio more than the size; -write-ratio 0 shows capacity alone.")
	}
	points, err := runSweep(ctx, cfg, sc)
	printSweep(os.Stdout, points)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		return 1
	}
	if sc.Plot != "" {
		fmt.Println("plot:", sc.Plot)
	}
	for _, p := range points {
		if p.Report.failed() {
			return 1
		}
	}
	return 0
}

// runSweep measures cfg's load at each size of sc (cfg.Targets is
// ignored) and writes the plot. It returns the points measured so far
// with an error.
func runSweep(ctx context.Context, cfg loadConfig, sc sweepConfig) ([]sweepPoint, error) {
	if sc.Logger == nil {
		sc.Logger = slog.New(slog.DiscardHandler)
	}
	var points []sweepPoint
	for i, size := range sc.Sizes {
		if cfg.ProgressTo != nil {
			fmt.Fprintf(cfg.ProgressTo, "sweep %d/%d: L1 %s\n", i+1, len(sc.Sizes), formatSize(size))
		}
		r, err := runSweepPoint(ctx, cfg, sc, size)
		if err != nil {
			return points, fmt.Errorf("L1 %s: %w", formatSize(size), err)
		}
		points = append(points, sweepPoint{L1Bytes: size, Report: r})
		if ctx.Err() != nil {
			return points, ctx.Err()
		}
	}
	if sc.Plot == "" {
		return points, nil
	}
	if err := writeSweepPlot(sc.Plot, points, cfg.Zipf, cfg.Products); err != nil {
		return points, fmt.Errorf("plot: %w", err)
	}
	return points, nil
}

func runSweepPoint(ctx context.Context, cfg loadConfig, sc sweepConfig, size int64) (loadReport, error) {
	// Telemetry of its own, closed with the replica: NewApp's default
	// would outlive it.
	tm, err := newTelemetry(ctx, "")
	if err != nil {
		return loadReport{}, err
	}
	defer tm.Close(context.WithoutCancel(ctx))
	app, err := NewApp(ctx, Config{
		DatabaseURL: sc.DatabaseURL, Seed: cfg.Products, L1Bytes: size, RedisKind: "none",
		WriteRate: -1, Logger: sc.Logger, Telemetry: tm,
	})
	if err != nil {
		return loadReport{}, err
	}
	defer app.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return loadReport{}, err
	}
	srv := &http.Server{Handler: app.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	cfg.Targets = []string{"http://" + ln.Addr().String()}
	// The warm-up fills L1 so that the measurement shows the steady
	// state, not the cold start every size shares.
	warm := cfg
	warm.Duration, warm.Progress = max(sc.Duration/5, time.Millisecond), 0
	if _, err := runLoad(ctx, warm); err != nil {
		return loadReport{}, err
	}
	cfg.Duration, cfg.Progress = sc.Duration, 0
	return runLoad(ctx, cfg)
}

func printSweep(w io.Writer, points []sweepPoint) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "L1 size\tHTTP hit\tproducts L1 hit\treads without DB\treq/s\tp99\t5xx+transport\t")
	for _, p := range points {
		r := p.Report
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f\t%v\t%d\t\n", formatSize(p.L1Bytes), percent(r.HitHTTP), percent(r.HitL1),
			percent(r.ReadsWithoutDB), r.Throughput, roundLatency(r.P99), r.Status.Server+r.Status.Transport)
	}
	tw.Flush()
}

// writeSweepPlot draws the hit ratios against the L1 size, on a log
// scale since the sizes grow geometrically.
func writeSweepPlot(path string, points []sweepPoint, s float64, products int) error {
	if len(points) == 0 {
		return errors.New("no points")
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("example-catalog: hit ratio against L1 size (Zipf s=%g, %d products)", s, products)
	p.X.Label.Text = "L1 size of each cache (MiB)"
	p.Y.Label.Text = "hit ratio (%)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.TickerFunc(mibTicks)
	p.Legend.Top = false
	p.Legend.Left = false
	p.Add(plotter.NewGrid())

	series := []struct {
		name  string
		value func(loadReport) float64
	}{
		{"HTTP responses", func(r loadReport) float64 { return r.HitHTTP }},
		{"products L1", func(r loadReport) float64 { return r.HitL1 }},
		{"reads without DB", func(r loadReport) float64 { return r.ReadsWithoutDB }},
	}
	// One AddLinePoints call for every series: it picks colors and shapes
	// by position in its own arguments.
	var lines []any
	for _, sr := range series {
		var xys plotter.XYs
		for _, pt := range points {
			if v := sr.value(pt.Report); v >= 0 {
				xys = append(xys, plotter.XY{X: float64(pt.L1Bytes) / (1 << 20), Y: 100 * v})
			}
		}
		if len(xys) > 0 {
			lines = append(lines, sr.name, xys)
		}
	}
	if err := plotutil.AddLinePoints(p, lines...); err != nil {
		return err
	}
	// Room around the first and last size, and the full percent range.
	p.X.Min, p.X.Max = p.X.Min/1.5, p.X.Max*1.5
	p.Y.Min, p.Y.Max = 0, 100

	wt, err := p.WriterTo(8*vg.Inch, 5*vg.Inch, "png")
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := wt.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// mibTicks puts a tick at every power of two MiB in [min, max], labelled
// when there are few of them and at every other one otherwise: L1 sizes
// are usually swept by factors of 2 or 4, which decimal log ticks would
// leave between labels.
func mibTicks(low, high float64) []plot.Tick {
	var ticks []plot.Tick
	lo, hi := int(math.Floor(math.Log2(low))), int(math.Ceil(math.Log2(high)))
	for k := lo; k <= hi; k++ {
		v := math.Ldexp(1, k)
		if v < low*(1-1e-9) || v > high*(1+1e-9) {
			continue
		}
		t := plot.Tick{Value: v}
		if hi-lo <= 6 || k%2 == 0 {
			t.Label = strconv.FormatFloat(v, 'g', -1, 64)
		}
		ticks = append(ticks, t)
	}
	return ticks
}
