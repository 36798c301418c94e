package main

// End-to-end tests: three replicas (in this process, each with its own
// caches, connections and invalidation bus, each on its own real HTTP
// port) on one PostgreSQL and one Redis.

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// testPostgres returns the URL of a fresh schema in a PostgreSQL that the
// test may use: CATALOG_TEST_DATABASE_URL, else the local server's
// database test. Without one it skips, or fails in CI (.ci/run starts one).
func testPostgres(t *testing.T) string {
	t.Helper()
	base := os.Getenv("CATALOG_TEST_DATABASE_URL")
	if base == "" {
		base = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	db, err := sql.Open("pgx", base)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err = db.PingContext(ctx)
		cancel()
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no PostgreSQL at %s (set CATALOG_TEST_DATABASE_URL): %v", base, err)
		}
		t.Skipf("no PostgreSQL at %s (set CATALOG_TEST_DATABASE_URL): %v", base, err)
	}
	// A schema of its own: other runs share the server.
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "catalog_test_" + hex.EncodeToString(b)
	if _, err := db.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Exec("DROP SCHEMA " + schema + " CASCADE")
		db.Close()
	})
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	return base + sep + "search_path=" + schema
}

// replica is one catalog replica under test.
type replica struct {
	app *App
	srv *httptest.Server
}

// startReplicas starts n replicas on dbURL and the Redis at redisAddr, in
// one namespace, the first before the others (it creates and seeds the
// schema). Their Redis clients wait up to a second for each call:
// three replicas in one process under -race on two cores are slow, and
// the library's 100 ms defaults would turn slowness into fail-open paths
// these tests are not about.
func startReplicas(t *testing.T, n int, dbURL, redisAddr string, cfg Config) []*replica {
	t.Helper()
	return startReplicasURL(t, n, dbURL, "redis://"+redisAddr+"?read_timeout=1s&write_timeout=1s&pool_timeout=1s&pool_size=64", cfg)
}

// startReplicasURL is startReplicas with each replica's Redis client made
// by tiered.NewRedisClient(redisURL): a URL without options gives the
// library's defaults.
func startReplicasURL(t *testing.T, n int, dbURL, redisURL string, cfg Config) []*replica {
	t.Helper()
	if cfg.Namespace == "" {
		cfg.Namespace = strings.ReplaceAll(redistest.Namespace(t), "#", "_")
	}
	if cfg.Seed == 0 {
		cfg.Seed = 200
	}
	cfg.DatabaseURL = dbURL
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	var out []*replica
	for range n {
		c := cfg
		rdb, err := tiered.NewRedisClient(redisURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rdb.Close() })
		c.Redis, c.RedisKind = rdb, "redis"
		out = append(out, startApp(t, c))
	}
	return out
}

// startApp starts one replica with cfg on a real HTTP server, both closed
// when t ends; its logs go nowhere unless cfg says.
func startApp(t *testing.T, cfg Config) *replica {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	app, err := NewApp(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(app.Handler())
	t.Cleanup(func() {
		srv.Close()
		app.Close()
	})
	return &replica{app: app, srv: srv}
}

func (r *replica) do(t *testing.T, method, path string, body any, header ...string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, r.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, b
}

func (r *replica) product(t *testing.T, id int) (Product, *http.Response) {
	t.Helper()
	res, b := r.do(t, http.MethodGet, fmt.Sprintf("/products/%d", id), nil)
	var p Product
	if res.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatalf("GET /products/%d: %v in %q", id, err, b)
		}
	}
	return p, res
}

// TestReplicasSeeWritesWithinTheBound: on one Redis and on a cluster.
func TestReplicasSeeWritesWithinTheBound(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		sep := "?"
		if strings.Contains(r.URL, "?") {
			sep = "&"
		}
		rs := startReplicasURL(t, 3, testPostgres(t), r.URL+sep+"read_timeout=1s&write_timeout=1s&pool_timeout=1s&pool_size=64", Config{WriteRate: -1})
		const bound = 2 * time.Second // tiered's default StalenessBound
		var lags []time.Duration
		for i := range 60 {
			id := 1 + i%20
			for _, r := range rs { // every replica caches the product (and its response)
				if _, res := r.product(t, id); res.StatusCode != http.StatusOK {
					t.Fatalf("GET %d: %d", id, res.StatusCode)
				}
			}
			w := rs[i%3]
			res, b := w.do(t, http.MethodPut, fmt.Sprintf("/products/%d", id), map[string]int{"price_cents": 1000 + i})
			if res.StatusCode != http.StatusOK {
				t.Fatalf("PUT: %d %s", res.StatusCode, b)
			}
			var put Product
			_ = json.Unmarshal(b, &put)
			returned := time.Now()
			for j, r := range rs {
				if r == w {
					continue
				}
				for {
					p, _ := r.product(t, id)
					if p.Version == put.Version && p.PriceCents == 1000+i {
						lags = append(lags, time.Since(returned))
						break
					}
					if p.Version > put.Version {
						t.Fatalf("replica %d: version %d after PUT returned %d", j, p.Version, put.Version)
					}
					if time.Since(returned) > bound {
						t.Fatalf("replica %d still serves version %d of product %d %v after the PUT returned version %d", j, p.Version, id, bound, put.Version)
					}
					time.Sleep(time.Millisecond)
				}
			}
		}
		slices.Sort(lags)
		t.Logf("%s: new version seen by the other replicas: p50 %v, max %v after the PUT returned (%d reads)", r.Name, lags[len(lags)/2], lags[len(lags)-1], len(lags))
	})
}

func TestCatalogHTTPContract(t *testing.T) {
	rs := startReplicas(t, 3, testPostgres(t), redistest.Addr(t), Config{WriteRate: -1, PurgeToken: "s3cret"})
	a, b, c := rs[0], rs[1], rs[2]

	t.Run("product", func(t *testing.T) {
		p, res := a.product(t, 7)
		if res.StatusCode != http.StatusOK || p.ID != 7 || p.Version != 1 || p.Name == "" || p.Category == "" || p.UpdatedAt.IsZero() {
			t.Fatalf("GET /products/7 = %d %+v", res.StatusCode, p)
		}
		if res.Header.Get("X-Cache") != "MISS" || res.Header.Get("Cache-Status") == "" || res.Header.Get("ETag") == "" {
			t.Errorf("first GET headers: %v", res.Header)
		}
		_, res = a.product(t, 7)
		if res.Header.Get("X-Cache") != "HIT" {
			t.Errorf("second GET: X-Cache %q", res.Header.Get("X-Cache"))
		}
		etag := res.Header.Get("ETag")
		for _, r := range rs { // a hit on a, a miss on the others: 304 either way
			res, body := r.do(t, http.MethodGet, "/products/7", nil, "If-None-Match", etag)
			if res.StatusCode != http.StatusNotModified || len(body) != 0 {
				t.Errorf("If-None-Match: %d %q", res.StatusCode, body)
			}
		}
		if _, res := b.product(t, 999_999); res.StatusCode != http.StatusNotFound {
			t.Errorf("missing product: %d", res.StatusCode)
		}
		if res, _ := b.do(t, http.MethodGet, "/products/abc", nil); res.StatusCode != http.StatusBadRequest {
			t.Errorf("bad id: %d", res.StatusCode)
		}
	})

	t.Run("update purges list pages", func(t *testing.T) {
		p, _ := a.product(t, 9)
		page := "/products?category=" + p.Category + "&page=1"
		_, before := b.do(t, http.MethodGet, page, nil)
		if res, _ := b.do(t, http.MethodGet, page, nil); res.Header.Get("X-Cache") != "HIT" {
			t.Fatalf("list page not cached: %v", res.Header)
		}
		if !bytes.Contains(before, []byte(`"id":9,`)) {
			t.Fatalf("page 1 of %s does not show product 9: %s", p.Category, before)
		}
		res, body := c.do(t, http.MethodPut, "/products/9", map[string]string{"name": "Renamed nine"})
		if res.StatusCode != http.StatusOK {
			t.Fatalf("PUT: %d %s", res.StatusCode, body)
		}
		var up Product
		_ = json.Unmarshal(body, &up)
		if up.Version != p.Version+1 || up.Name != "Renamed nine" {
			t.Errorf("PUT returned %+v, want version %d", up, p.Version+1)
		}
		eventuallyT(t, 2*time.Second, "the page shows the new name", func() bool {
			_, after := b.do(t, http.MethodGet, page, nil)
			return bytes.Contains(after, []byte("Renamed nine"))
		})
		if res, _ := c.do(t, http.MethodPut, "/products/9", map[string]int{"price_cents": -1}); res.StatusCode != http.StatusBadRequest {
			t.Errorf("negative price: %d", res.StatusCode)
		}
		for name, body := range map[string]any{
			"not an object": "x", "unknown field": map[string]int{"prise_cents": 5}, "empty patch": map[string]int{},
			"NUL in a name": map[string]string{"name": "a\x00b"},
		} {
			if res, _ := c.do(t, http.MethodPut, "/products/9", body); res.StatusCode != http.StatusBadRequest {
				t.Errorf("%s: %d", name, res.StatusCode)
			}
		}
		if res, _ := c.do(t, http.MethodPut, "/products/9", nil, "Content-Type", "application/x-www-form-urlencoded"); res.StatusCode != http.StatusUnsupportedMediaType {
			t.Errorf("a form body: %d", res.StatusCode)
		}
		for _, q := range []string{"/products?junk=1", "/products/9?x=1", "/products?category=%00", "/products?category=%ff"} {
			if res, _ := c.do(t, http.MethodGet, q, nil); res.StatusCode != http.StatusBadRequest {
				t.Errorf("GET %s: %d", q, res.StatusCode)
			}
		}
		if p, _ := a.product(t, 9); p.Version != up.Version {
			t.Errorf("bad writes changed the product: %+v", p)
		}
	})

	t.Run("create and delete", func(t *testing.T) {
		res, body := a.do(t, http.MethodPost, "/products", map[string]any{"name": "New thing", "category": "toys", "price_cents": 250, "stock": 3})
		if res.StatusCode != http.StatusCreated {
			t.Fatalf("POST: %d %s", res.StatusCode, body)
		}
		var p Product
		_ = json.Unmarshal(body, &p)
		if p.ID == 0 || p.Version != 1 {
			t.Fatalf("POST returned %+v", p)
		}
		for _, r := range rs {
			if got, res := r.product(t, p.ID); res.StatusCode != http.StatusOK || got.Name != "New thing" {
				t.Errorf("GET new product: %d %+v", res.StatusCode, got)
			}
		}
		if res, _ := b.do(t, http.MethodDelete, fmt.Sprintf("/products/%d", p.ID), nil); res.StatusCode != http.StatusNoContent {
			t.Fatalf("DELETE: %d", res.StatusCode)
		}
		for i, r := range rs {
			eventuallyT(t, 2*time.Second, fmt.Sprintf("replica %d answers 404", i), func() bool {
				_, res := r.product(t, p.ID)
				return res.StatusCode == http.StatusNotFound
			})
		}
	})

	t.Run("purge needs the token", func(t *testing.T) {
		if res, _ := a.do(t, http.MethodPost, "/admin/purge?all=1", nil); res.StatusCode != http.StatusUnauthorized || res.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("purge without token: %d %v", res.StatusCode, res.Header)
		}
		if res, _ := a.do(t, http.MethodPost, "/admin/purge?all=1", nil, "Authorization", "Bearer wrong"); res.StatusCode != http.StatusUnauthorized {
			t.Errorf("purge with a wrong token: %d", res.StatusCode)
		}
		if res, _ := a.do(t, http.MethodPost, "/admin/purge?all=1", nil, "Authorization", "Basic s3cret"); res.StatusCode != http.StatusUnauthorized {
			t.Errorf("purge with the token under another scheme: %d", res.StatusCode)
		}
		if res, _ := a.do(t, http.MethodPost, "/admin/purge?product=11", nil, "Authorization", "bearer s3cret"); res.StatusCode != http.StatusNoContent {
			t.Errorf("purge with the scheme in lower case (schemes are case-insensitive): %d", res.StatusCode)
		}
		a.product(t, 11)
		if _, res := a.product(t, 11); res.Header.Get("X-Cache") != "HIT" {
			t.Fatalf("not cached")
		}
		if res, _ := a.do(t, http.MethodPost, "/admin/purge?product=11", nil, "Authorization", "Bearer s3cret"); res.StatusCode != http.StatusNoContent {
			t.Fatalf("purge: %d", res.StatusCode)
		}
		if _, res := a.product(t, 11); res.Header.Get("X-Cache") != "MISS" {
			t.Errorf("after purge: X-Cache %q", res.Header.Get("X-Cache"))
		}
		// The database changed behind the service's back: "all" drops
		// every response and every product's data, in every replica.
		b.product(t, 12)
		if _, err := a.app.db.db.Exec(a.app.db.q("UPDATE products SET name = ? WHERE id = ?"), "Edited by hand", 12); err != nil {
			t.Fatal(err)
		}
		if res, _ := a.do(t, http.MethodPost, "/admin/purge?all=1", nil, "Authorization", "Bearer s3cret"); res.StatusCode != http.StatusNoContent {
			t.Fatalf("purge all: %d", res.StatusCode)
		}
		eventuallyT(t, 2*time.Second, "the hand edit shows on another replica", func() bool {
			p, _ := b.product(t, 12)
			return p.Name == "Edited by hand"
		})
	})

	t.Run("observability endpoints", func(t *testing.T) {
		for path, want := range map[string]string{
			"/healthz": "ok", "/readyz": "ready", "/metrics": "tiercache_hits_total",
			"/debug/cache": "<table", "/debug/cache.json": `"products"`,
		} {
			res, body := a.do(t, http.MethodGet, path, nil)
			if res.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(want)) {
				t.Errorf("GET %s: %d, body without %q", path, res.StatusCode, want)
			}
		}
		_, body := a.do(t, http.MethodGet, "/metrics", nil)
		for _, m := range []string{"tiercache_misses_total", "catalog_db_queries_total", "http_server_request_duration_seconds_bucket",
			"tiercache_invalidation_keys_total", "tiercache_invalidation_messages_total", "tiercache_load_duration_seconds"} {
			if !bytes.Contains(body, []byte(m)) {
				t.Errorf("/metrics has no %s", m)
			}
		}
	})
}

func TestWriteBurstIsRateLimited(t *testing.T) {
	rs := startReplicas(t, 3, testPostgres(t), redistest.Addr(t), Config{WriteRate: 10})
	var mu sync.Mutex
	codes := map[int]int{}
	retryAfter := ""
	var wg sync.WaitGroup
	start := time.Now()
	for g := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				// One client, every replica: the limit is shared through
				// Redis. The client claims another address each time, which
				// must not buy it another limit.
				res, _ := rs[(g+i)%3].do(t, http.MethodPut, fmt.Sprintf("/products/%d", 1+g%10), map[string]int{"stock": i},
					"X-Forwarded-For", fmt.Sprintf("10.0.%d.%d", g, i), "X-Real-Ip", fmt.Sprintf("10.1.%d.%d", g, i))
				mu.Lock()
				codes[res.StatusCode]++
				if res.StatusCode == http.StatusTooManyRequests {
					retryAfter = res.Header.Get("Retry-After")
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	t.Logf("60 writes from 12 goroutines in %v at 10/s: %v", took, codes)
	// A burst of 10, then 10 a second.
	if allowed := 10 + int(10*took.Seconds()) + 1; codes[http.StatusTooManyRequests] == 0 || codes[http.StatusOK] == 0 || codes[http.StatusOK] > allowed {
		t.Errorf("status codes %v: want some 429s and at most %d 200s", codes, allowed)
	}
	if retryAfter == "" {
		t.Error("429 without Retry-After")
	}
	if res, _ := rs[0].do(t, http.MethodGet, "/products/1", nil); res.StatusCode != http.StatusOK {
		t.Errorf("reads are not limited: %d", res.StatusCode)
	}
}

// eventuallyT polls cond every 5 ms for up to d.
func eventuallyT(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("after %v: %s", d, what)
		}
	}
}

func TestCacheOffQueriesTheDatabaseEveryTime(t *testing.T) {
	r := startApp(t, Config{DatabaseURL: "sqlite:" + t.TempDir() + "/catalog.sqlite", Seed: 50, CacheOff: true})
	app := r.app
	for range 5 {
		if p, res := r.product(t, 3); res.StatusCode != http.StatusOK || p.ID != 3 || res.Header.Get("X-Cache") != "" {
			t.Fatalf("GET: %d %+v %v", res.StatusCode, p, res.Header)
		}
	}
	if res, body := r.do(t, http.MethodPut, "/products/3", map[string]int{"stock": 9}); res.StatusCode != http.StatusOK {
		t.Fatalf("PUT: %d %s", res.StatusCode, body)
	}
	if p, _ := r.product(t, 3); p.Stock != 9 || p.Version != 2 {
		t.Errorf("after PUT: %+v", p)
	}
	if q := app.stats().DB.Queries; q != 7 {
		t.Errorf("%d database queries for 6 reads and a write, want 7", q)
	}
	if res, _ := r.do(t, http.MethodGet, "/readyz", nil); res.StatusCode != http.StatusOK {
		t.Errorf("readyz without a cache: %d", res.StatusCode)
	}
}

func TestEmbeddedRedisRunsEveryLayer(t *testing.T) {
	// The demo mode: miniredis must run the cache's scripts, pub/sub and
	// the limiter, or the demo would show errors instead of hits.
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer mr.Close()
	rs := startReplicas(t, 2, "sqlite:"+t.TempDir()+"/catalog.sqlite", mr.Addr(), Config{WriteRate: 2})
	a, b := rs[0], rs[1]
	for range 3 {
		for _, r := range rs {
			r.product(t, 5)
			r.do(t, http.MethodGet, "/products?category=toys", nil)
		}
	}
	res, body := a.do(t, http.MethodPut, "/products/5", map[string]int{"stock": 77})
	if res.StatusCode != http.StatusOK {
		t.Fatalf("PUT: %d %s", res.StatusCode, body)
	}
	eventuallyT(t, 2*time.Second, "b sees the write", func() bool { p, _ := b.product(t, 5); return p.Stock == 77 })
	codes := map[int]int{}
	for range 12 {
		res, _ := a.do(t, http.MethodPut, "/products/6", map[string]int{"stock": 1})
		codes[res.StatusCode]++
	}
	if codes[http.StatusTooManyRequests] == 0 {
		t.Errorf("no 429 from the embedded limiter: %v", codes)
	}
	for i, r := range rs {
		s := r.app.stats()
		if s.Products.L2Errors+s.Pages.L2Errors+s.Products.DecodeErrors+s.Pages.DecodeErrors != 0 || s.Products.L2Hits+s.Pages.L1Hits == 0 {
			t.Errorf("replica %d on miniredis: %+v / %+v", i, s.Products, s.Pages)
		}
	}
}

func TestNoRedisStartsAnEmbeddedOne(t *testing.T) {
	// The README's run command on a machine with no Redis: nothing answers
	// at the default address, so an embedded server stands in.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	rdb, kind, closeRedis, err := connectRedis(ctx, log, "", "redis://127.0.0.1:1/0")
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	if kind != "embedded" || rdb.Ping(ctx).Err() != nil {
		t.Fatalf("kind %q, ping %v", kind, rdb.Ping(ctx).Err())
	}
	// An explicit URL is used as given, even down: the cache fails open.
	rdb2, kind, closeRedis2, err := connectRedis(ctx, log, "redis://127.0.0.1:1/0", "")
	if err != nil || kind != "redis" || rdb2 == nil {
		t.Fatalf("explicit URL: %q, %v", kind, err)
	}
	closeRedis2()
	if _, _, _, err := connectRedis(ctx, log, "http://nope", ""); err == nil {
		t.Error("a bad REDIS_URL gave no error")
	}
}

func TestWarmUpFromAKeyFileGatesReadiness(t *testing.T) {
	dir := t.TempDir()
	keys := dir + "/keys.txt"
	if err := os.WriteFile(keys, []byte("product:1\nproduct:2\nproduct:3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startApp(t, Config{DatabaseURL: "sqlite:" + dir + "/catalog.sqlite", Seed: 10, DBDelay: time.Second, WarmFile: keys})
	app := r.app
	if res, _ := r.do(t, http.MethodGet, "/readyz", nil); res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("readyz while warming: %d", res.StatusCode)
	}
	eventuallyT(t, 5*time.Second, "ready", func() bool {
		res, _ := r.do(t, http.MethodGet, "/readyz", nil)
		return res.StatusCode == http.StatusOK
	})
	if s := app.stats(); s.Products.L1Items != 3 || s.DB.Queries != 1 {
		t.Errorf("after warm-up: %d L1 items, %d queries; want 3 items from one query", s.Products.L1Items, s.DB.Queries)
	}
}
