package main

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func testLoadConfig(targets ...string) loadConfig {
	return loadConfig{
		Targets: targets, Duration: 2 * time.Second, Concurrency: 8, Products: 500,
		Zipf: 1.0, WriteRatio: 0.02, ListRatio: 0.05, Seed: 1,
	}
}

// startCountingLoadTestApp starts a replica without Redis on a fresh
// SQLite file, behind a front that counts the load's requests (every
// /products request; not /debug/cache.json) and calls stop once n have
// been answered, and returns the front's URL.
func startCountingLoadTestApp(t *testing.T, products int, n int64, stop func()) string {
	t.Helper()
	app := startApp(t, Config{
		DatabaseURL: "sqlite:" + filepath.Join(t.TempDir(), "catalog.sqlite"),
		Seed:        products, WriteRate: -1, RedisKind: "none",
	}).app.Handler()
	var answered atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		app.ServeHTTP(w, r)
		if strings.HasPrefix(r.URL.Path, "/products") && answered.Add(1) == n {
			stop()
		}
	}))
	t.Cleanup(front.Close)
	return front.URL
}

// TestLoadAgainstApp runs the load generator against a replica. Each run
// is a number of requests, not a duration: the hit ratios depend on how
// many requests warmed the caches (at 1 s, about 600 requests on a loaded
// 2-core machine under -race, the HTTP hit ratio was 65 %, and fewer
// requests on a slower run took it under the 50 % checked), so a run
// bounded by time would test the machine's speed. The duration is only a
// cap, far beyond the time the requests take.
func TestLoadAgainstApp(t *testing.T) {
	const maxDuration = 2 * time.Minute
	tests := []struct {
		name       string
		requests   int64
		writeRatio float64
		minHitHTTP float64
	}{
		{"reads only", 1000, 0, 0.5},
		// NOTE: without Redis every write clears the whole L1 of the HTTP
		// cache (tiered.InvalidateTags cannot know which keys carry a tag
		// without L2), so at 2 % writes its hit ratio is near 1/3; the
		// product cache still keeps the database out of most reads.
		{"2% writes", 2000, 0.02, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			cfg := testLoadConfig(startCountingLoadTestApp(t, 500, tt.requests, stop))
			cfg.Duration, cfg.WriteRatio = maxDuration, tt.writeRatio
			r, err := runLoad(ctx, cfg)
			if err != nil {
				t.Fatalf("runLoad: %v", err)
			}
			var out bytes.Buffer
			r.print(&out)
			t.Logf("report:\n%s", out.String())

			if r.Requests == 0 {
				t.Fatal("no requests")
			}
			if ctx.Err() == nil {
				t.Fatalf("the run ended after %v, before its %d requests had been answered", maxDuration, tt.requests)
			}
			if r.Status.Server != 0 || r.Status.Transport != 0 {
				t.Errorf("5xx = %d, transport errors = %d, want 0", r.Status.Server, r.Status.Transport)
			}
			if len(r.StatsErrors) != 0 {
				t.Errorf("StatsErrors = %q, want none", r.StatsErrors)
			}
			if tt.writeRatio > 0 && r.Writes == 0 {
				t.Errorf("writes = 0, want some")
			}
			if r.HitHTTP <= tt.minHitHTTP {
				t.Errorf("HitHTTP = %.3f, want > %v", r.HitHTTP, tt.minHitHTTP)
			}
			if r.ReadsWithoutDB <= 0.5 {
				t.Errorf("ReadsWithoutDB = %.3f, want > 0.5", r.ReadsWithoutDB)
			}
			if r.HitL2 != -1 {
				t.Errorf("HitL2 = %.3f without Redis, want -1 (n/a)", r.HitL2)
			}
			if !(r.P50 > 0 && r.P50 <= r.P99 && r.P99 <= r.Max) {
				t.Errorf("p50 %v, p99 %v, max %v: want 0 < p50 <= p99 <= max", r.P50, r.P99, r.Max)
			}
		})
	}
}

func TestLoadReportsUnreachableStats(t *testing.T) {
	// A target that serves requests but no /debug/cache.json: the run goes
	// on and says so.
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	cfg := testLoadConfig(srv.URL)
	cfg.Duration = 200 * time.Millisecond
	r, err := runLoad(context.Background(), cfg)
	if err != nil {
		t.Fatalf("runLoad: %v", err)
	}
	if len(r.StatsErrors) != 2 { // before and after
		t.Errorf("StatsErrors = %q, want 2", r.StatsErrors)
	}
	if r.HitHTTP != -1 || r.ReadsWithoutDB != -1 {
		t.Errorf("HitHTTP = %v, ReadsWithoutDB = %v, want -1 (n/a)", r.HitHTTP, r.ReadsWithoutDB)
	}
	if r.Status.NotFound != r.Requests || r.failed() {
		t.Errorf("404s = %d of %d, failed = %v; want all 404, not failed", r.Status.NotFound, r.Requests, r.failed())
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name    string
		code    int
		pending bool
		err     error
		want    int
	}{
		{"ok", http.StatusOK, false, nil, class2xx},
		{"created", http.StatusCreated, false, nil, class2xx},
		{"not modified", http.StatusNotModified, false, nil, class304},
		{"not found", http.StatusNotFound, false, nil, class404},
		{"rate limited", http.StatusTooManyRequests, false, nil, class429},
		{"bad request", http.StatusBadRequest, false, nil, classOther},
		{"invalidation pending", http.StatusServiceUnavailable, true, nil, classPending},
		{"database down", http.StatusServiceUnavailable, false, nil, class5xx},
		{"server error", http.StatusInternalServerError, false, nil, class5xx},
		{"no response", 0, false, io.ErrUnexpectedEOF, classTransport},
	}
	for _, tt := range tests {
		if got := classify(tt.code, tt.pending, tt.err); got != tt.want {
			t.Errorf("%s: classify(%d, %v, %v) = %d, want %d", tt.name, tt.code, tt.pending, tt.err, got, tt.want)
		}
	}
}

func TestLoadgenBadFlags(t *testing.T) {
	tests := [][]string{
		{"-concurrency", "0"},
		{"-write-ratio", "1.5"},
		{"-targets", "127.0.0.1:8080"},
		{"-sweep-l1", "1XB"},
		{"-duration", "soon"},
		{"stray"},
	}
	stderr := os.Stderr
	os.Stderr, _ = os.Open(os.DevNull) // the usage text is noise here
	defer func() { os.Stderr = stderr }()
	for _, args := range tests {
		if got := runLoadgen(args); got != 2 {
			t.Errorf("runLoadgen(%q) = %d, want 2", args, got)
		}
	}
}

func TestZipfSampler(t *testing.T) {
	z := newZipf(1000, 1.0)
	rng := rand.New(rand.NewPCG(42, 0))
	counts := make(map[int]int)
	const draws = 200_000
	for range draws {
		id := z.draw(rng)
		if id < 1 || id > 1000 {
			t.Fatalf("draw = %d, want 1..1000", id)
		}
		counts[id]++
	}
	// P(k) is proportional to 1/k: id 1 comes twice as often as id 2.
	got := float64(counts[1]) / float64(counts[2])
	if got < 1.8 || got > 2.2 {
		t.Errorf("count(1)/count(2) = %d/%d = %.3f, want 2 within 10%%", counts[1], counts[2], got)
	}
	// And H(1000) ≈ 7.485 makes id 1 about 13.4 % of the draws.
	if share := float64(counts[1]) / draws; share < 0.125 || share > 0.142 {
		t.Errorf("share of id 1 = %.4f, want about 0.1336", share)
	}
}

func TestZipfUniformAtZero(t *testing.T) {
	z := newZipf(4, 0)
	want := []float64{0.25, 0.5, 0.75, 1}
	for i, w := range want {
		if got := z.cdf[i]; got < w-1e-12 || got > w+1e-12 {
			t.Errorf("cdf[%d] = %v, want %v", i, got, w)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"65536", 65536},
		{"512B", 512},
		{"256KiB", 256 << 10},
		{"1MiB", 1 << 20},
		{"1.5MiB", 3 << 19},
		{"64mib", 64 << 20},
		{" 2GiB ", 2 << 30},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "MiB", "0", "-1KiB", "1TiB", "1 MB", "0.1"} {
		if got, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", bad, got)
		}
	}
	sizes, err := parseSizes("256KiB, 1MiB,")
	if err != nil || len(sizes) != 2 || sizes[0] != 256<<10 || sizes[1] != 1<<20 {
		t.Errorf("parseSizes = %v, %v; want [262144 1048576]", sizes, err)
	}
}

func TestSizeFormat(t *testing.T) {
	for n, want := range map[int64]string{100: "100B", 64 << 10: "64KiB", 3 << 19: "1.5MiB", 2 << 30: "2GiB"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestLoadLatencyQuantiles(t *testing.T) {
	var h latencyHist
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, time.Millisecond}} {
		got := h.quantile(tt.q)
		if diff := got - tt.want; diff < -tt.want/64 || diff > tt.want/64 {
			t.Errorf("quantile(%v) = %v, want %v within 1/64", tt.q, got, tt.want)
		}
	}
	if got := h.max(); got != time.Millisecond {
		t.Errorf("max = %v, want 1ms", got)
	}
}

func TestSweepWritesPlot(t *testing.T) {
	cfg := testLoadConfig("http://unused")
	cfg.Concurrency = 4
	sc := sweepConfig{
		Sizes:       []int64{64 << 10, 1 << 20},
		Duration:    time.Second,
		DatabaseURL: "sqlite:" + filepath.Join(t.TempDir(), "catalog.sqlite"),
		Plot:        filepath.Join(t.TempDir(), "hit-ratio.png"),
	}
	points, err := runSweep(context.Background(), cfg, sc)
	if err != nil {
		t.Fatalf("runSweep: %v", err)
	}
	var out bytes.Buffer
	printSweep(&out, points)
	t.Logf("sweep:\n%s", out.String())
	if len(points) != 2 {
		t.Fatalf("%d points, want 2", len(points))
	}
	for _, p := range points {
		if p.Report.Requests == 0 || p.Report.HitL1 < 0 {
			t.Errorf("L1 %s: %d requests, HitL1 = %v; want some, measured", formatSize(p.L1Bytes), p.Report.Requests, p.Report.HitL1)
		}
	}
	f, err := os.Open(sc.Plot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	magic := make([]byte, 8)
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != "\x89PNG\r\n\x1a\n" {
		t.Errorf("%s starts with %q (%v), want the PNG signature", sc.Plot, magic, err)
	}
}
