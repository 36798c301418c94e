package echocache_test

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/middleware/echocache"
	"github.com/tiercache/tiercache/middleware/httpcache"
	"github.com/tiercache/tiercache/tiered"
)

func TestMain(m *testing.M) { redistest.Main(m) }

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// server is an Echo app with the middleware in front of handlers that
// count their calls.
type server struct {
	e     *echo.Echo
	mw    *echocache.Middleware
	calls atomic.Int64
}

func newServer(t *testing.T, cfg echocache.Config, handler func(c echo.Context) error) *server {
	t.Helper()
	if cfg.Cache == nil {
		c, err := tiered.New[echocache.Response](tiered.Config{Logger: discard})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cfg.Cache = c
	}
	mw, err := echocache.NewMiddleware(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{e: echo.New(), mw: mw}
	s.e.Use(mw.Handler)
	h := func(c echo.Context) error {
		s.calls.Add(1)
		return handler(c)
	}
	s.e.Any("/*", h)
	return s
}

func (s *server) do(t *testing.T, method, target string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	s.e.ServeHTTP(rec, req)
	return rec
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// respond returns a handler that answers 200 "body <path>" with headers.
func respond(kv ...string) func(c echo.Context) error {
	return func(c echo.Context) error {
		for i := 0; i+1 < len(kv); i += 2 {
			c.Response().Header().Add(kv[i], kv[i+1])
		}
		return c.String(http.StatusOK, "body "+c.Request().URL.Path)
	}
}

// respondRaw is respond with the fields put in the header map as given,
// not canonicalized.
func respondRaw(kv ...string) func(c echo.Context) error {
	return func(c echo.Context) error {
		h := c.Response().Header()
		for i := 0; i+1 < len(kv); i += 2 {
			h[kv[i]] = append(h[kv[i]], kv[i+1])
		}
		return c.String(http.StatusOK, "body "+c.Request().URL.Path)
	}
}

func TestFreshResponseServedFromCache(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond("Cache-Control", "max-age=60", "ETag", `"v1"`))
	first := s.do(t, "GET", "/p/1", nil)
	second := s.do(t, "GET", "/p/1", nil)
	if n := s.calls.Load(); n != 1 {
		t.Fatalf("handler called %d times, want 1", n)
	}
	if second.Body.String() != first.Body.String() || second.Code != 200 {
		t.Errorf("cached response %d %q, want %d %q", second.Code, second.Body, first.Code, first.Body)
	}
	if got := second.Header().Get("Cache-Status"); got != "tiercache; hit" {
		t.Errorf("Cache-Status = %q, want a hit", got)
	}
	if second.Header().Get("Age") == "" {
		t.Errorf("no Age header on a cached response")
	}
	if got := first.Header().Get("Cache-Status"); got != "tiercache; fwd=miss" {
		t.Errorf("first Cache-Status = %q, want fwd=miss", got)
	}
	// A conditional request is answered 304 from the cache.
	if rec := s.do(t, "GET", "/p/1", hdr("If-None-Match", `W/"v1"`)); rec.Code != http.StatusNotModified || rec.Body.Len() != 0 {
		t.Errorf("conditional request: %d with %d bytes, want 304 and no body", rec.Code, rec.Body.Len())
	}
	if n := s.calls.Load(); n != 1 {
		t.Errorf("handler called %d times, want 1", n)
	}
}

// TestNotCached: one row per rule of a shared cache; each request is made
// twice and must reach the handler twice.
func TestNotCached(t *testing.T) {
	fresh := "max-age=60"
	tests := []struct {
		name    string
		cfg     echocache.Config
		method  string
		req     http.Header
		handler func(c echo.Context) error
	}{
		{name: "no freshness information", handler: respond()},
		{name: "response no-store", handler: respond("Cache-Control", "no-store, max-age=60")},
		{name: "request no-store", req: hdr("Cache-Control", "no-store"), handler: respond("Cache-Control", fresh)},
		{name: "private", handler: respond("Cache-Control", "private, max-age=60")},
		{name: "Set-Cookie", handler: respond("Cache-Control", fresh, "Set-Cookie", "session=1")},
		{name: "request with Cookie", req: hdr("Cookie", "session=1"), handler: respond("Cache-Control", fresh)},
		{name: "request with Authorization", req: hdr("Authorization", "Bearer x"), handler: respond("Cache-Control", fresh)},
		{name: "Vary: *", handler: respond("Cache-Control", fresh, "Vary", "*")},
		{name: "500 with max-age", handler: func(c echo.Context) error {
			c.Response().Header().Set("Cache-Control", fresh)
			return c.String(http.StatusInternalServerError, "oops")
		}},
		{name: "400 without freshness", handler: func(c echo.Context) error {
			return c.String(http.StatusBadRequest, "bad")
		}},
		{name: "POST", method: "POST", handler: respond("Cache-Control", fresh)},
		{name: "body over the cap", cfg: echocache.Config{MaxBodyBytes: 4}, handler: respond("Cache-Control", fresh)},
		// Fields set in the header map directly, as net/http sends them: the
		// policy must see them whatever their case.
		{name: "set-cookie in the map", handler: respondRaw("Cache-Control", fresh, "set-cookie", "session=1")},
		{name: "SET-COOKIE in the map", handler: respondRaw("Cache-Control", fresh, "SET-COOKIE", "session=1")},
		{name: "cache-control private in the map", handler: respondRaw("cache-control", "private, max-age=60")},
		{name: "cache-control no-store in the map", handler: respondRaw("Cache-Control", fresh, "cache-control", "no-store")},
		{name: "vary * in the map", handler: respondRaw("Cache-Control", fresh, "vary", "*")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, tt.cfg, tt.handler)
			method := tt.method
			if method == "" {
				method = "GET"
			}
			s.do(t, method, "/x", tt.req)
			s.do(t, method, "/x", tt.req)
			if n := s.calls.Load(); n != 2 {
				t.Errorf("handler called %d times, want 2 (not cached)", n)
			}
		})
	}
}

func TestAuthorizationAllowedByResponse(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond("Cache-Control", "public, max-age=60"))
	auth := hdr("Authorization", "Bearer x")
	s.do(t, "GET", "/x", auth)
	s.do(t, "GET", "/x", auth)
	if n := s.calls.Load(); n != 1 {
		t.Errorf("handler called %d times, want 1: public allows a shared cache to store it", n)
	}
}

func TestForwardedHeadersNotTrustedByDefault(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond("Cache-Control", "max-age=60"))
	// A client tries to write into another host's entry.
	s.do(t, "GET", "http://a.example/x", hdr("X-Forwarded-Host", "b.example"))
	rec := s.do(t, "GET", "http://b.example/x", nil)
	if n := s.calls.Load(); n != 2 || !strings.Contains(rec.Header().Get("Cache-Status"), "miss") {
		t.Errorf("b.example answered from a.example's request (%d handler calls)", n)
	}
	tr := newServer(t, echocache.Config{Key: httpcache.KeyConfig{TrustForwarded: true}}, respond("Cache-Control", "max-age=60"))
	tr.do(t, "GET", "http://proxy.internal/x", hdr("X-Forwarded-Host", "b.example", "X-Forwarded-Proto", "https"))
	tr.do(t, "GET", "https://b.example/x", nil)
	if n := tr.calls.Load(); n != 1 {
		t.Errorf("with TrustForwarded, the forwarded host and scheme were not the key (%d handler calls)", n)
	}
}

func TestRequestDirectives(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond("Cache-Control", "max-age=60"))
	if rec := s.do(t, "GET", "/x", hdr("Cache-Control", "only-if-cached")); rec.Code != http.StatusGatewayTimeout {
		t.Errorf("only-if-cached on a miss: %d, want 504", rec.Code)
	}
	s.do(t, "GET", "/x", nil)
	s.do(t, "GET", "/x", hdr("Cache-Control", "no-cache"))
	if n := s.calls.Load(); n != 2 {
		t.Errorf("request no-cache answered from the cache (%d handler calls, want 2)", n)
	}
	if rec := s.do(t, "GET", "/x", hdr("Cache-Control", "only-if-cached")); rec.Code != 200 {
		t.Errorf("only-if-cached on a hit: %d, want 200", rec.Code)
	}
}

func TestVaryStoresVariants(t *testing.T) {
	s := newServer(t, echocache.Config{}, func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "max-age=60")
		c.Response().Header().Set("Vary", "Accept-Language")
		return c.String(200, "lang "+c.Request().Header.Get("Accept-Language"))
	})
	en, de := hdr("Accept-Language", "en"), hdr("Accept-Language", "de")
	s.do(t, "GET", "/x", en)
	s.do(t, "GET", "/x", de)
	if got := s.do(t, "GET", "/x", en).Body.String(); got != "lang en" {
		t.Errorf("en variant = %q", got)
	}
	if got := s.do(t, "GET", "/x", de).Body.String(); got != "lang de" {
		t.Errorf("de variant = %q", got)
	}
	if n := s.calls.Load(); n != 2 {
		t.Errorf("handler called %d times, want 2 (one per variant)", n)
	}
}

func TestUnsafeMethodInvalidates(t *testing.T) {
	s := newServer(t, echocache.Config{}, func(c echo.Context) error {
		if c.Request().Method == "POST" {
			c.Response().Header().Set("Location", "/p/2")
			return c.NoContent(http.StatusCreated)
		}
		c.Response().Header().Set("Cache-Control", "max-age=60")
		return c.String(200, "v")
	})
	for _, p := range []string{"/p/1", "/p/2"} {
		s.do(t, "GET", p, nil)
	}
	s.do(t, "PUT", "/p/1", nil)
	s.do(t, "POST", "/p", nil) // Location: /p/2
	before := s.calls.Load()
	for _, p := range []string{"/p/1", "/p/2"} {
		if rec := s.do(t, "GET", p, nil); !strings.Contains(rec.Header().Get("Cache-Status"), "fwd=miss") {
			t.Errorf("GET %s after an unsafe request: Cache-Status %q, want a miss", p, rec.Header().Get("Cache-Status"))
		}
	}
	if n := s.calls.Load() - before; n != 2 {
		t.Errorf("%d handler calls after invalidation, want 2", n)
	}
}

func TestSurrogateKeysAndPurge(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond("Cache-Control", "max-age=60", "Surrogate-Key", "product-1 category-7"))
	rec := s.do(t, "GET", "/p/1", nil)
	if rec.Header().Get("Surrogate-Key") != "" {
		t.Errorf("Surrogate-Key reached the client")
	}
	s.do(t, "GET", "/p/1", nil)
	if err := s.mw.PurgeTags(context.Background(), "category-7"); err != nil {
		t.Fatal(err)
	}
	s.do(t, "GET", "/p/1", nil)
	if err := s.mw.PurgeURL(context.Background(), "http://example.com/p/1"); err != nil {
		t.Fatal(err)
	}
	s.do(t, "GET", "/p/1", nil)
	if n := s.calls.Load(); n != 3 {
		t.Errorf("handler called %d times, want 3 (first, after the tag purge, after the URL purge)", n)
	}
}

func TestStreamedResponseReachesClient(t *testing.T) {
	s := newServer(t, echocache.Config{MaxBodyBytes: 8}, func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "max-age=60")
		c.Response().WriteHeader(200)
		for _, chunk := range []string{"one,", "two,", "three"} {
			if _, err := c.Response().Write([]byte(chunk)); err != nil {
				return err
			}
			c.Response().Flush()
		}
		return nil
	})
	rec := s.do(t, "GET", "/stream", nil)
	if rec.Body.String() != "one,two,three" || !rec.Flushed {
		t.Errorf("streamed body %q (flushed %v), want all of it, flushed", rec.Body, rec.Flushed)
	}
	s.do(t, "GET", "/stream", nil)
	if n := s.calls.Load(); n != 2 {
		t.Errorf("a response over MaxBodyBytes was stored (%d handler calls)", n)
	}
}

// TestPutOnOneReplicaInvalidatesTheOther: two Echo servers, each with its
// own tiered cache and Redis client on one Redis, over real HTTP.
func TestPutOnOneReplicaInvalidatesTheOther(t *testing.T) {
	addr, ns := redistest.Addr(t), redistest.Namespace(t)
	var version atomic.Int64
	handler := func(c echo.Context) error {
		if c.Request().Method == "PUT" {
			version.Add(1)
			return c.NoContent(http.StatusNoContent)
		}
		c.Response().Header().Set("Cache-Control", "max-age=600")
		return c.String(200, "v"+strconv.FormatInt(version.Load(), 10))
	}
	var urls []string
	for range 2 {
		rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
		t.Cleanup(func() { rdb.Close() })
		c, err := tiered.New[echocache.Response](tiered.Config{Redis: rdb, Namespace: ns, Logger: discard})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s := newServer(t, echocache.Config{Cache: c}, handler)
		srv := httptest.NewServer(s.e)
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	get := func(base string) string {
		res, err := http.Get(base + "/p/1")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return string(b)
	}
	// Both servers see 127.0.0.1:port hosts; the key includes the host, so
	// each replica caches its own URL. The PUT goes to the second replica
	// for the first replica's URL, as a load balancer in front of both
	// would send it under one host name.
	if got := get(urls[0]); got != "v0" {
		t.Fatalf("first GET = %q", got)
	}
	req, _ := http.NewRequest("PUT", urls[1]+"/p/1", nil)
	req.Host = strings.TrimPrefix(urls[0], "http://")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	deadline := time.Now().Add(time.Second)
	for get(urls[0]) != "v1" {
		if time.Now().After(deadline) {
			t.Fatalf("replica 1 still serves the old response 1 s after a PUT on replica 2")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConcurrentMissesRunTheHandlerOnce: 20 requests for a cold URL, with
// a handler that takes 50 ms, run it once; the others are served the
// stored response.
func TestConcurrentMissesRunTheHandlerOnce(t *testing.T) {
	s := newServer(t, echocache.Config{}, func(c echo.Context) error {
		time.Sleep(50 * time.Millisecond)
		c.Response().Header().Set("Cache-Control", "max-age=60")
		return c.String(200, "slow")
	})
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if rec := s.do(t, "GET", "/cold", nil); rec.Body.String() != "slow" {
				t.Errorf("body %q", rec.Body)
			}
		})
	}
	wg.Wait()
	if n := s.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times for 20 concurrent misses, want 1", n)
	}
}

// TestRevalidation: a stale response with a validator is revalidated with
// a conditional request to the handler; a 304 refreshes it and the client
// gets the stored body; a new version replaces it; a failing handler is
// answered with the stale response only where stale-if-error allows.
func TestRevalidation(t *testing.T) {
	var version atomic.Int64
	var bodies, notModified atomic.Int64
	var fail atomic.Bool
	s := newServer(t, echocache.Config{}, func(c echo.Context) error {
		if fail.Load() {
			return c.String(http.StatusInternalServerError, "down")
		}
		etag := `"v` + strconv.FormatInt(version.Load(), 10) + `"`
		h := c.Response().Header()
		h.Set("Cache-Control", "max-age=0, stale-if-error=60")
		h.Set("ETag", etag)
		if c.Request().Header.Get("If-None-Match") == etag {
			notModified.Add(1)
			return c.NoContent(http.StatusNotModified)
		}
		bodies.Add(1)
		return c.String(200, "version "+etag)
	})
	if got := s.do(t, "GET", "/r", nil).Body.String(); got != `version "v0"` {
		t.Fatalf("first GET = %q", got)
	}
	rec := s.do(t, "GET", "/r", nil)
	if rec.Code != 200 || rec.Body.String() != `version "v0"` || !strings.Contains(rec.Header().Get("Cache-Status"), "fwd-status=304") {
		t.Errorf("revalidated GET = %d %q (%s), want the stored body after a 304", rec.Code, rec.Body, rec.Header().Get("Cache-Status"))
	}
	if bodies.Load() != 1 || notModified.Load() != 1 {
		t.Errorf("handler made %d bodies and %d 304s, want 1 and 1", bodies.Load(), notModified.Load())
	}
	version.Add(1)
	if got := s.do(t, "GET", "/r", nil).Body.String(); got != `version "v1"` {
		t.Errorf("after a change = %q, want the new version", got)
	}
	fail.Store(true)
	rec = s.do(t, "GET", "/r", nil)
	if rec.Code != 200 || rec.Body.String() != `version "v1"` || !strings.Contains(rec.Header().Get("Cache-Status"), "stale-if-error") {
		t.Errorf("handler failing = %d %q (%s), want the stale response (stale-if-error=60)", rec.Code, rec.Body, rec.Header().Get("Cache-Status"))
	}
}

func TestNoStaleIfErrorWithoutTheDirective(t *testing.T) {
	var fail atomic.Bool
	s := newServer(t, echocache.Config{}, func(c echo.Context) error {
		if fail.Load() {
			return c.String(http.StatusInternalServerError, "down")
		}
		c.Response().Header().Set("Cache-Control", "max-age=0")
		c.Response().Header().Set("ETag", `"x"`)
		return c.String(200, "ok")
	})
	s.do(t, "GET", "/r", nil)
	fail.Store(true)
	if rec := s.do(t, "GET", "/r", nil); rec.Code != http.StatusInternalServerError {
		t.Errorf("handler failing without stale-if-error = %d, want its 500", rec.Code)
	}
}

func TestPurgeHandler(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond("Cache-Control", "max-age=60", "Surrogate-Key", "t1"))
	const token = "secret"
	s.e.POST("/_purge", s.mw.PurgeHandler(func(c echo.Context) bool {
		return c.Request().Header.Get("Authorization") == "Bearer "+token
	}))
	purge := func(auth string, body string) int {
		req := httptest.NewRequest("POST", "/_purge", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		s.e.ServeHTTP(rec, req)
		return rec.Code
	}
	s.do(t, "GET", "/p", nil)
	if code := purge("", "tag=t1"); code != http.StatusForbidden {
		t.Errorf("unauthenticated purge = %d, want 403", code)
	}
	if code := purge("Bearer wrong", "tag=t1"); code != http.StatusForbidden {
		t.Errorf("purge with a wrong token = %d, want 403", code)
	}
	s.do(t, "GET", "/p", nil)
	if n := s.calls.Load(); n != 1 {
		t.Fatalf("refused purges purged: %d handler calls, want 1", n)
	}
	if code := purge("Bearer "+token, ""); code != http.StatusBadRequest {
		t.Errorf("purge of nothing = %d, want 400", code)
	}
	if code := purge("Bearer "+token, "tag=t1"); code != http.StatusNoContent {
		t.Errorf("authorized purge = %d, want 204", code)
	}
	s.do(t, "GET", "/p", nil)
	if n := s.calls.Load(); n != 2 {
		t.Errorf("%d handler calls after the purge, want 2", n)
	}
	if code := purge("Bearer "+token, "url=http://example.com/p"); code != http.StatusNoContent {
		t.Errorf("authorized URL purge = %d, want 204", code)
	}
	s.do(t, "GET", "/p", nil)
	if n := s.calls.Load(); n != 3 {
		t.Errorf("%d handler calls after the URL purge, want 3", n)
	}
	nobody := s.mw.PurgeHandler(nil)
	c := s.e.NewContext(httptest.NewRequest("POST", "/_purge?tag=t1", nil), httptest.NewRecorder())
	if err := nobody(c); err == nil {
		t.Errorf("a purge handler without authorize accepted a purge")
	}
}

// TestStaleWhileRevalidate: past max-age but within the response's
// stale-while-revalidate, readers get the stale response at once while one
// background request to the handler refreshes it.
func TestStaleWhileRevalidate(t *testing.T) {
	var version atomic.Int64
	s := newServer(t, echocache.Config{}, func(c echo.Context) error {
		time.Sleep(20 * time.Millisecond)
		c.Response().Header().Set("Cache-Control", "max-age=1, stale-while-revalidate=60")
		return c.String(200, "v"+strconv.FormatInt(version.Load(), 10))
	})
	s.do(t, "GET", "/swr", nil)
	version.Add(1)
	time.Sleep(1100 * time.Millisecond) // past max-age=1
	for range 5 {
		start := time.Now()
		rec := s.do(t, "GET", "/swr", nil)
		if rec.Body.String() != "v0" || !strings.Contains(rec.Header().Get("Cache-Status"), "fwd=stale") {
			t.Fatalf("stale read = %q (%s), want the stale v0", rec.Body, rec.Header().Get("Cache-Status"))
		}
		if d := time.Since(start); d > 10*time.Millisecond {
			t.Errorf("a stale read took %v: it waited for the handler", d)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for s.do(t, "GET", "/swr", nil).Body.String() != "v1" {
		if time.Now().After(deadline) {
			t.Fatal("the background refresh never landed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := s.calls.Load(); n != 2 {
		t.Errorf("handler called %d times, want 2 (the first, and one background refresh)", n)
	}
}

// TestDirectives: response and request directives through a real Echo.
// Each row stores a response, then makes a second request and says whether
// it reached the handler.
func TestDirectives(t *testing.T) {
	past := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	future := time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
	now := time.Now().UTC().Format(http.TimeFormat)
	tests := []struct {
		name      string
		resp      []string    // response header pairs
		second    http.Header // the second request's header
		method    string      // of the second request; GET if empty
		wantCalls int64
		wantCode  int
	}{
		{name: "max-age", resp: []string{"Cache-Control", "max-age=60"}, wantCalls: 1},
		{name: "s-maxage over max-age=0", resp: []string{"Cache-Control", "max-age=0, s-maxage=60"}, wantCalls: 1},
		{name: "Expires in the future", resp: []string{"Expires", future, "Date", now}, wantCalls: 1},
		{name: "Expires in the past", resp: []string{"Expires", past, "Date", now}, wantCalls: 2},
		{name: "max-age=0 without a validator", resp: []string{"Cache-Control", "max-age=0"}, wantCalls: 2},
		{name: "no-cache with ETag revalidates", resp: []string{"Cache-Control", "no-cache", "ETag", `"e"`}, wantCalls: 2},
		{name: "request max-age=0", resp: []string{"Cache-Control", "max-age=60"}, second: hdr("Cache-Control", "max-age=0"), wantCalls: 2},
		{name: "request min-fresh past the lifetime", resp: []string{"Cache-Control", "max-age=60"}, second: hdr("Cache-Control", "min-fresh=120"), wantCalls: 2},
		{name: "request max-stale serves stale", resp: []string{"Cache-Control", "max-age=0"}, second: hdr("Cache-Control", "max-stale=60"), wantCalls: 1},
		{name: "must-revalidate ignores max-stale", resp: []string{"Cache-Control", "max-age=0, must-revalidate"}, second: hdr("Cache-Control", "max-stale=60"), wantCalls: 2},
		{name: "proxy-revalidate ignores max-stale", resp: []string{"Cache-Control", "max-age=0, proxy-revalidate"}, second: hdr("Cache-Control", "max-stale=60"), wantCalls: 2},
		{name: "Pragma: no-cache", resp: []string{"Cache-Control", "max-age=60"}, second: hdr("Pragma", "no-cache"), wantCalls: 2},
		{name: "If-Modified-Since answered 304", resp: []string{"Cache-Control", "max-age=60", "Last-Modified", past}, second: hdr("If-Modified-Since", now), wantCalls: 1, wantCode: 304},
		{name: "If-None-Match list", resp: []string{"Cache-Control", "max-age=60", "ETag", `"b"`}, second: hdr("If-None-Match", `"a", W/"b"`), wantCalls: 1, wantCode: 304},
		{name: "HEAD from a stored GET", resp: []string{"Cache-Control", "max-age=60"}, method: "HEAD", wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, echocache.Config{}, respond(tt.resp...))
			s.do(t, "GET", "/d", nil)
			method := tt.method
			if method == "" {
				method = "GET"
			}
			rec := s.do(t, method, "/d", tt.second)
			if n := s.calls.Load(); n != tt.wantCalls {
				t.Errorf("handler called %d times, want %d (Cache-Status %q)", n, tt.wantCalls, rec.Header().Get("Cache-Status"))
			}
			want := tt.wantCode
			if want == 0 {
				want = 200
			}
			if rec.Code != want {
				t.Errorf("second response %d, want %d", rec.Code, want)
			}
			if method == "HEAD" && rec.Body.Len() != 0 {
				t.Errorf("HEAD answered with a %d-byte body", rec.Body.Len())
			}
		})
	}
}

func TestVariantsPerURLAreCapped(t *testing.T) {
	s := newServer(t, echocache.Config{Policy: httpcache.Policy{MaxVariants: 3}}, func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "max-age=60")
		c.Response().Header().Set("Vary", "X-Variant")
		return c.String(200, c.Request().Header.Get("X-Variant"))
	})
	for i := range 5 {
		s.do(t, "GET", "/v", hdr("X-Variant", strconv.Itoa(i)))
	}
	before := s.calls.Load()
	for i := range 5 {
		s.do(t, "GET", "/v", hdr("X-Variant", strconv.Itoa(i)))
	}
	if n := s.calls.Load() - before; n != 2 {
		t.Errorf("%d of 5 variants missed on the second pass, want 2 (3 stored, the cap)", n)
	}
}

// TestNoDecisionByExtension: a personal page under a static-looking name
// (web cache deception) is not cached unless its own headers say so.
func TestNoDecisionByExtension(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond()) // no Cache-Control
	s.do(t, "GET", "/account/settings/x.css", nil)
	s.do(t, "GET", "/account/settings/x.css", nil)
	if n := s.calls.Load(); n != 2 {
		t.Errorf("a response without freshness was cached for its .css name (%d handler calls)", n)
	}
}

func TestGetWithBodyNotCached(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond("Cache-Control", "max-age=60"))
	for range 2 {
		req := httptest.NewRequest("GET", "/b", strings.NewReader("q=1"))
		rec := httptest.NewRecorder()
		s.e.ServeHTTP(rec, req)
		if got := rec.Header().Get("Cache-Status"); !strings.Contains(got, "bypass") {
			t.Errorf("GET with a body: Cache-Status %q, want a bypass", got)
		}
	}
	if n := s.calls.Load(); n != 2 {
		t.Errorf("a GET with a body was cached (%d handler calls)", n)
	}
}

func TestCacheStatusDoesNotLeakTheKey(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond("Cache-Control", "max-age=60"))
	for range 2 {
		rec := s.do(t, "GET", "http://secret-host.example/private/path?token=abc", nil)
		if cs := rec.Header().Get("Cache-Status"); strings.Contains(cs, "secret") || strings.Contains(cs, "path") || strings.Contains(cs, "token") {
			t.Errorf("Cache-Status %q leaks the key", cs)
		}
	}
}

// TestSoftPurge: a soft purge marks responses stale in every replica
// instead of removing them: the next request revalidates with the handler
// (a 304 keeps the stored body), or, within stale-while-revalidate, is
// served at once while the response is refreshed.
func TestSoftPurge(t *testing.T) {
	addr, ns := redistest.Addr(t), redistest.Namespace(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	cache, err := tiered.New[echocache.Response](tiered.Config{Redis: rdb, Namespace: ns, Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	var bodies, notModified atomic.Int64
	s := newServer(t, echocache.Config{Cache: cache}, func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("ETag", `"e1"`)
		h.Set("Surrogate-Key", "k1")
		if c.Request().URL.Path == "/swr" {
			h.Set("Cache-Control", "max-age=600, stale-while-revalidate=60")
		} else {
			h.Set("Cache-Control", "max-age=600")
		}
		if c.Request().Header.Get("If-None-Match") == `"e1"` {
			notModified.Add(1)
			return c.NoContent(http.StatusNotModified)
		}
		bodies.Add(1)
		return c.String(200, "body")
	})
	ctx := context.Background()

	s.do(t, "GET", "/r", nil)
	if err := s.mw.SoftPurgeURL(ctx, "http://example.com/r"); err != nil {
		t.Fatal(err)
	}
	rec := s.do(t, "GET", "/r", nil)
	if rec.Body.String() != "body" || !strings.Contains(rec.Header().Get("Cache-Status"), "fwd-status=304") {
		t.Errorf("after a soft purge: %q (%s), want the stored body after a 304", rec.Body, rec.Header().Get("Cache-Status"))
	}
	if rec := s.do(t, "GET", "/r", nil); rec.Header().Get("Cache-Status") != "tiercache; hit" {
		t.Errorf("after revalidation: Cache-Status %q, want a fresh hit", rec.Header().Get("Cache-Status"))
	}
	if bodies.Load() != 1 || notModified.Load() != 1 {
		t.Errorf("handler made %d bodies and %d 304s, want 1 and 1", bodies.Load(), notModified.Load())
	}

	s.do(t, "GET", "/swr", nil)
	if err := s.mw.SoftPurgeTags(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	rec = s.do(t, "GET", "/swr", nil)
	if rec.Body.String() != "body" || !strings.Contains(rec.Header().Get("Cache-Status"), "fwd=stale") {
		t.Errorf("soft-purged within stale-while-revalidate: %q (%s), want the stale body at once", rec.Body, rec.Header().Get("Cache-Status"))
	}
	deadline := time.Now().Add(2 * time.Second)
	for s.do(t, "GET", "/swr", nil).Header().Get("Cache-Status") != "tiercache; hit" {
		if time.Now().After(deadline) {
			t.Fatal("the background revalidation after a soft purge never landed")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFieldQualifiedDirectives: a response with private="F" or
// no-cache="F" is stored and served without F.
func TestFieldQualifiedDirectives(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond("Cache-Control", `max-age=60, private="X-User", no-cache="X-Token"`, "X-User", "alice", "X-Token", "t"))
	first := s.do(t, "GET", "/f", nil)
	if first.Header().Get("X-User") != "alice" {
		t.Fatalf("the handler's own response lost X-User")
	}
	second := s.do(t, "GET", "/f", nil)
	if n := s.calls.Load(); n != 1 {
		t.Fatalf("handler called %d times, want 1", n)
	}
	if second.Header().Get("X-User") != "" || second.Header().Get("X-Token") != "" {
		t.Errorf("a cached response carried X-User %q, X-Token %q", second.Header().Get("X-User"), second.Header().Get("X-Token"))
	}
}

// TestVirtualHostsNotPoisoned: Echo routes virtual hosts by the exact Host;
// a request for another spelling of a host must not fill its entry.
func TestVirtualHostsNotPoisoned(t *testing.T) {
	responses, err := tiered.New[echocache.Response](tiered.Config{Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { responses.Close() })
	e := echo.New()
	e.Use(echocache.New(responses))
	cached := func(body string) echo.HandlerFunc {
		return func(c echo.Context) error {
			c.Response().Header().Set("Cache-Control", "max-age=60")
			return c.String(200, body)
		}
	}
	e.GET("/x", cached("MAIN"))
	e.Host("api.example.com").GET("/x", cached("API"))
	get := func(host string) string {
		req := httptest.NewRequest("GET", "/x", nil)
		req.Host = host
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		return rec.Body.String()
	}
	get("api.example.com:80")
	get("API.example.com")
	if got := get("api.example.com"); got != "API" {
		t.Errorf("api.example.com = %q, want API: another spelling of the host poisoned its entry", got)
	}
}

// TestOuterMiddlewareHeadersNotReplayed: what middleware outside the cache
// set for one request (a request id) is not stored and sent to others.
func TestOuterMiddlewareHeadersNotReplayed(t *testing.T) {
	s := newServer(t, echocache.Config{}, respond("Cache-Control", "max-age=60"))
	e := echo.New()
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			c.Response().Header().Set("X-Request-Id", c.Request().Header.Get("X-Request-Id"))
			return next(c)
		}
	})
	e.Use(s.mw.Handler)
	e.GET("/*", func(c echo.Context) error {
		s.calls.Add(1)
		return respond("Cache-Control", "max-age=60")(c)
	})
	s.e = e
	s.do(t, "GET", "/r", hdr("X-Request-Id", "attacker"))
	rec := s.do(t, "GET", "/r", hdr("X-Request-Id", "victim"))
	if got := rec.Header().Get("X-Request-Id"); got != "victim" {
		t.Errorf("a cached response carried X-Request-Id %q, want this request's own", got)
	}
	if n := s.calls.Load(); n != 1 {
		t.Errorf("handler called %d times, want 1", n)
	}
}

// TestRevalidatingAFlushingHandler: a handler that flushes can be
// revalidated, in the request and in the background, without a panic.
func TestRevalidatingAFlushingHandler(t *testing.T) {
	for _, cc := range []string{"max-age=0", "max-age=1, stale-while-revalidate=60"} {
		t.Run(cc, func(t *testing.T) {
			s := newServer(t, echocache.Config{}, func(c echo.Context) error {
				c.Response().Header().Set("Cache-Control", cc)
				c.Response().Header().Set("ETag", `"e"`)
				c.Response().WriteHeader(200)
				_, _ = c.Response().Write([]byte("part"))
				c.Response().Flush()
				return nil
			})
			s.do(t, "GET", "/f", nil)
			if strings.Contains(cc, "max-age=1") {
				time.Sleep(1100 * time.Millisecond)
			}
			if rec := s.do(t, "GET", "/f", nil); rec.Code != 200 || rec.Body.String() != "part" {
				t.Errorf("revalidated response %d %q", rec.Code, rec.Body)
			}
			deadline := time.Now().Add(time.Second) // let a background revalidation finish
			for s.calls.Load() < 2 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestPreconditionsOnlyFor2xx(t *testing.T) {
	s := newServer(t, echocache.Config{}, func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "max-age=60")
		c.Response().Header().Set("ETag", `"gone"`)
		return c.String(http.StatusNotFound, "no such product")
	})
	s.do(t, "GET", "/p/404", nil)
	if rec := s.do(t, "GET", "/p/404", hdr("If-None-Match", "*")); rec.Code != http.StatusNotFound {
		t.Errorf("If-None-Match: * on a stored 404 = %d, want the 404", rec.Code)
	}
}

func TestVariantCapCountsDistinctVariants(t *testing.T) {
	s := newServer(t, echocache.Config{Policy: httpcache.Policy{MaxVariants: 2}}, func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "max-age=0")
		c.Response().Header().Set("Vary", "Accept-Language")
		return c.String(200, c.Request().Header.Get("Accept-Language"))
	})
	for range 5 { // one variant stored again and again (max-age=0)
		s.do(t, "GET", "/v", hdr("Accept-Language", "en"))
	}
	s.do(t, "GET", "/v", hdr("Accept-Language", "fr"))
	// fr must have been stored as the second variant: with max-age=0 it is
	// stale at once, but an only-if-cached request finds it.
	if rec := s.do(t, "GET", "/v", hdr("Accept-Language", "fr", "Cache-Control", "only-if-cached, max-stale")); rec.Code != 200 {
		t.Errorf("the second distinct variant was not stored (%d): refreshes of one variant used up the cap", rec.Code)
	}
}

func TestOutcomesCountedAndExported(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	s := newServer(t, echocache.Config{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))},
		respond("Cache-Control", "max-age=60"))
	s.do(t, "GET", "/o", nil)
	s.do(t, "GET", "/o", nil)
	s.do(t, "GET", "/o", hdr("Cookie", "a=1"))
	s.do(t, "PUT", "/o", nil)
	want := echocache.Stats{"miss": 1, "stored": 1, "hit": 1, "bypass": 1, "invalidated": 1, "stale": 0, "revalidated": 0}
	if got := s.mw.Stats(); !maps.Equal(got, want) {
		t.Errorf("Stats() = %v, want %v", got, want)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var hits int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "tiercache.http.outcomes" {
				for _, dp := range sum.DataPoints {
					if v, _ := dp.Attributes.Value("outcome"); v.AsString() == "hit" {
						hits = dp.Value
					}
				}
			}
		}
	}
	if hits != 1 {
		t.Errorf("tiercache.http.outcomes{outcome=hit} = %d, want 1", hits)
	}
}
