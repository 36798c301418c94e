package echocache

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/tiercache/tiercache/middleware/httpcache"
	"github.com/tiercache/tiercache/tiered"
)

// Response is a stored response: what the cache keeps in its tiered.Cache.
type Response struct {
	Status    int         `json:"s"`
	Header    http.Header `json:"h"`
	Body      []byte      `json:"b,omitempty"`
	Requested time.Time   `json:"rq"` // when the request went to the handler
	Received  time.Time   `json:"rc"` // when the handler's response was complete
	// Vary is set on the index entry of a URL whose response varies: the
	// request headers it varies on (the index has no status or body).
	Vary  []string `json:"v,omitempty"`
	Index bool     `json:"i,omitempty"`
	// Variants lists the variant keys stored under an index (their
	// hashes), for Policy.MaxVariants. Concurrent stores of new variants
	// may lose one another's entries here, letting a few more through.
	Variants []uint64 `json:"n,omitempty"`
	// Tags are the entry's tags (its URL's, its Surrogate-Keys), kept so
	// that a soft purge can store it again under the same tags.
	Tags []string `json:"t,omitempty"`
	// Stale marks a soft-purged response: it is stale whatever its age,
	// and served only as a stale response may be (revalidated, or within
	// stale-while-revalidate or stale-if-error).
	Stale bool `json:"x,omitempty"`
}

// Config configures the middleware.
type Config struct {
	// Skipper skips the middleware for a request. Default: never.
	Skipper middleware.Skipper

	// Cache stores the responses. Required. Give it its own Namespace; with
	// Redis, its invalidation bus evicts purged and invalidated responses
	// from every replica.
	Cache *tiered.Cache[Response]

	// Policy holds the shared-cache rules beyond RFC 9111 (a default TTL,
	// cookies). The zero value is the strict default: responses without
	// freshness information, requests with cookies and responses that set
	// them are not cached.
	Policy httpcache.Policy

	// Key says how requests are keyed (trusting X-Forwarded-*, the key
	// length cap).
	Key httpcache.KeyConfig

	// MaxBodyBytes caps a stored body; a larger response still reaches the
	// client, but is not stored. Default: 1 MiB.
	MaxBodyBytes int64

	// Name is this cache's name in the Cache-Status header. Default:
	// "tiercache".
	Name string

	// Logger receives structured logs. Default: slog.Default().
	Logger *slog.Logger

	// MeterProvider receives the tiercache.http.outcomes counters.
	// Default: the global OpenTelemetry provider.
	MeterProvider metric.MeterProvider

	// RevalidateTimeout bounds a background revalidation
	// (stale-while-revalidate), whose handler runs with no client waiting.
	// Default: 30 seconds.
	RevalidateTimeout time.Duration
}

// DefaultConfig is the default configuration, without a Cache.
var DefaultConfig = Config{Skipper: middleware.DefaultSkipper, MaxBodyBytes: 1 << 20, Name: "tiercache", RevalidateTimeout: 30 * time.Second}

// Middleware is a configured cache. It is an echo.MiddlewareFunc through
// Handler, and offers purging.
type Middleware struct {
	cfg         Config
	maxVariants int
	hitStatus   []string // the Cache-Status of a fresh hit
	counts      [numOutcomes]atomic.Int64

	mu       sync.Mutex
	inflight map[string]chan struct{} // misses in progress, by URL key
}

// New returns the middleware caching in cache with DefaultConfig.
func New(cache *tiered.Cache[Response]) echo.MiddlewareFunc {
	cfg := DefaultConfig
	cfg.Cache = cache
	return WithConfig(cfg)
}

// WithConfig returns the middleware for cfg. It panics on a bad Config, as
// Echo's own XxxWithConfig constructors do; ToMiddleware returns the error.
func WithConfig(cfg Config) echo.MiddlewareFunc {
	mw, err := cfg.ToMiddleware()
	if err != nil {
		panic(err)
	}
	return mw
}

// ToMiddleware validates cfg and returns the middleware.
func (cfg Config) ToMiddleware() (echo.MiddlewareFunc, error) {
	m, err := NewMiddleware(cfg)
	if err != nil {
		return nil, err
	}
	return m.Handler, nil
}

// NewMiddleware returns the middleware for cfg, for the purge methods.
func NewMiddleware(cfg Config) (*Middleware, error) {
	if cfg.Cache == nil {
		return nil, errors.New("echocache: Config.Cache is required")
	}
	if cfg.Skipper == nil {
		cfg.Skipper = middleware.DefaultSkipper
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultConfig.MaxBodyBytes
	}
	if cfg.MaxBodyBytes < 0 {
		return nil, fmt.Errorf("echocache: MaxBodyBytes %d is negative", cfg.MaxBodyBytes)
	}
	if cfg.Name == "" {
		cfg.Name = DefaultConfig.Name
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	if cfg.RevalidateTimeout <= 0 {
		cfg.RevalidateTimeout = DefaultConfig.RevalidateTimeout
	}
	if cfg.Key.MaxKeyBytes == 0 {
		// Room left, under the tiered cache's own key limit, for the Vary
		// part of a variant's key and the prefixes of the index and tags.
		cfg.Key.MaxKeyBytes = 512
	}
	m := &Middleware{cfg: cfg, inflight: make(map[string]chan struct{}), maxVariants: cfg.Policy.MaxVariants,
		hitStatus: []string{cfg.Name + "; hit"}}
	if m.maxVariants <= 0 {
		m.maxVariants = 16
	}
	if _, err := m.register(cfg.MeterProvider.Meter("github.com/tiercache/tiercache/middleware/echocache")); err != nil {
		return nil, fmt.Errorf("echocache: metrics: %w", err)
	}
	return m, nil
}

// Handler is the echo.MiddlewareFunc.
func (m *Middleware) Handler(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if m.cfg.Skipper(c) {
			return next(c)
		}
		req := c.Request()
		switch req.Method {
		case http.MethodGet, http.MethodHead:
			return m.serve(c, next)
		case http.MethodOptions, http.MethodTrace, http.MethodConnect:
			return next(c)
		default:
			// Any other method is unsafe (POST, PUT, PATCH, DELETE, ...):
			// a success invalidates what it targeted.
			err := next(c)
			if s := c.Response().Status; err == nil && s >= 200 && s < 400 {
				m.invalidateAfter(c)
			}
			return err
		}
	}
}

func (m *Middleware) serve(c echo.Context, next echo.HandlerFunc) error {
	req := c.Request()
	if ok, reason := m.cfg.Policy.Cacheable(req); !ok {
		m.count(outBypass)
		m.status(c, "fwd=bypass; detail="+reason)
		return next(c)
	}
	key, err := httpcache.Key(req, m.cfg.Key)
	if err != nil {
		m.count(outBypass)
		m.status(c, "fwd=bypass; detail=key")
		return next(c)
	}
	reqCC := httpcache.ParseCacheControl(req.Header.Values("Cache-Control"))
	for waited := false; ; waited = true {
		if done, err := m.lookup(c, next, key, reqCC); done {
			return err
		}
		if reqCC.OnlyIfCached {
			m.status(c, "fwd=miss; detail=only-if-cached")
			return c.NoContent(http.StatusGatewayTimeout)
		}
		if waited {
			// The request we waited for stored nothing for us (another
			// variant, or nothing storable): go to the handler.
			return m.fetch(c, next, key, "fwd=miss")
		}
		// Concurrent misses of one URL run the handler once: the first
		// goes on, the others wait for it and look again.
		wait, leader := m.join(key)
		if leader {
			defer m.leave(key, wait)
			return m.fetch(c, next, key, "fwd=miss")
		}
		select {
		case <-wait:
		case <-req.Context().Done():
			return req.Context().Err()
		}
	}
}

// lookup answers from the cache if it can; done reports that it did.
func (m *Middleware) lookup(c echo.Context, next echo.HandlerFunc, key string, reqCC httpcache.Directives) (done bool, err error) {
	req := c.Request()
	ctx := req.Context()
	// Under the URL's key is its response or, when the response varies,
	// an index naming the request headers it varies on, whose values key
	// the variant.
	stored, err := m.cfg.Cache.Get(ctx, key)
	if err == nil && stored.Index {
		stored, err = m.cfg.Cache.Get(ctx, httpcache.VaryKey(key, stored.Vary, req))
	}
	if err != nil || stored.Index || !m.authorizedUse(req, stored) {
		return false, nil
	}
	now := time.Now()
	age := httpcache.Age(stored.Header, stored.Requested, stored.Received, now)
	lifetime := m.cfg.Policy.Lifetime(stored.Header, stored.Received)
	if stored.Stale && age <= lifetime {
		age = lifetime + time.Second // soft-purged: just past its lifetime
	}
	switch httpcache.Usable(req, stored.Header, age, lifetime) {
	case httpcache.Serve:
		m.count(outHit)
		return true, m.writeStatus(c, stored, age, m.hitStatus)
	case httpcache.ServeStale:
		// Within stale-while-revalidate (rather than only the client's
		// max-stale), refresh it for the next readers.
		if cc := httpcache.ParseCacheControl(stored.Header.Values("Cache-Control")); cc.StaleWhileRevalidate.Present &&
			age-lifetime <= cc.StaleWhileRevalidate.Value {
			m.revalidateAsync(c, next, key, stored)
		}
		m.count(outStale)
		return true, m.write(c, stored, age, "hit; fwd=stale")
	}
	// Stale, or not to be served without the origin.
	if reqCC.OnlyIfCached {
		m.status(c, "fwd=stale; detail=only-if-cached")
		return true, c.NoContent(http.StatusGatewayTimeout)
	}
	if stored.Header.Get("ETag") != "" || stored.Header.Get("Last-Modified") != "" {
		return true, m.revalidate(c, next, key, stored, age, lifetime)
	}
	return false, nil
}

// join returns the channel that closes when the miss of key in progress
// ends; leader reports that there was none, and the caller must leave.
func (m *Middleware) join(key string) (wait chan struct{}, leader bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w, ok := m.inflight[key]; ok {
		return w, false
	}
	w := make(chan struct{})
	m.inflight[key] = w
	return w, true
}

func (m *Middleware) leave(key string, wait chan struct{}) {
	m.mu.Lock()
	delete(m.inflight, key)
	m.mu.Unlock()
	close(wait)
}

// authorizedUse applies RFC 9111 §3.5 to reads: a request with
// Authorization is served from the cache only if the stored response
// allows a shared cache to reuse it.
func (m *Middleware) authorizedUse(req *http.Request, stored Response) bool {
	if req.Header.Get("Authorization") == "" {
		return true
	}
	cc := httpcache.ParseCacheControl(stored.Header.Values("Cache-Control"))
	return cc.Public || cc.MustRevalidate || cc.SMaxAge.Present
}

// fetch runs the handler, passing its response to the client while
// capturing it, and stores it if a shared cache may.
func (m *Middleware) fetch(c echo.Context, next echo.HandlerFunc, key, fwd string) error {
	res := c.Response()
	// The Cache-Status goes out with the handler's headers; whether the
	// response is stored is known only after, so it says the forward.
	m.count(outMiss)
	m.status(c, fwd)
	// What outer middleware set before the handler (a request id, CORS)
	// belongs to this request: it is not stored and replayed to others.
	pre := res.Header().Clone()
	cw := &captureWriter{ResponseWriter: res.Writer, max: m.cfg.MaxBodyBytes}
	res.Writer = cw
	requested := time.Now()
	err := func() error {
		defer func() { res.Writer = cw.ResponseWriter }() // even if the handler panics
		return next(c)
	}()
	if err != nil || cw.overflow || !res.Committed {
		return err
	}
	m.store(c, key, cw.status, handlerHeader(res.Header(), pre), cw.body.Bytes(), cw.tags, requested, time.Now())
	return nil
}

// handlerHeader is h without the fields that were in pre unchanged: what
// the handler (and the middleware inside this one) set.
func handlerHeader(h, pre http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, v := range h {
		if pv, ok := pre[k]; !ok || !slices.Equal(pv, v) {
			out[k] = v
		}
	}
	return out
}

// store keeps a response to c's request under key (and its variant key),
// if a shared cache may store it.
func (m *Middleware) store(c echo.Context, key string, status int, header http.Header, body []byte, skeys []string, requested, received time.Time) {
	req := c.Request()
	if ok, _ := m.cfg.Policy.Storable(req, status, header); !ok {
		return
	}
	h := httpcache.StoredHeader(header)
	h.Del("Cache-Status") // an upstream Age stays: Age() counts it
	vary, _ := httpcache.ParseVary(h.Values("Vary"))
	tags := []string{urlTag(key)}
	for _, t := range skeys {
		tags = append(tags, "sk:"+t)
	}
	stored := Response{Status: status, Header: h, Body: body, Requested: requested, Received: received, Tags: tags}
	ctx := context.WithoutCancel(req.Context())
	opts := []tiered.Option{tiered.WithTTL(m.keep(h, received)), tiered.WithTags(tags...)}
	vkey := key
	if len(vary) > 0 {
		vkey = httpcache.VaryKey(key, vary, req)
		sum := variantHash(vkey)
		idx := Response{Index: true, Vary: vary}
		if old, err := m.cfg.Cache.Get(ctx, key); err == nil && old.Index && slices.Equal(old.Vary, vary) {
			idx.Variants = old.Variants
		}
		if !slices.Contains(idx.Variants, sum) {
			if len(idx.Variants) >= m.maxVariants {
				return // a URL may not fill the cache with variants
			}
			idx.Variants = append(idx.Variants, sum)
		}
		// The index outlives its longest-lived variant (an hour at most past
		// this one): a variant without its index cannot be found.
		iopts := []tiered.Option{tiered.WithTTL(m.keep(h, received) + time.Hour), tiered.WithTags(tags...)}
		if err := m.cfg.Cache.Set(ctx, key, idx, iopts...); err != nil && !errors.Is(err, tiered.ErrL2Unavailable) {
			m.cfg.Logger.Warn("echocache: response not stored", "path", req.URL.Path, "err", err)
			return
		}
	}
	// With L2 unavailable the response is stored in this replica's L1 only,
	// which the cache logs and counts, once a second at most.
	if err := m.cfg.Cache.Set(ctx, vkey, stored, opts...); err != nil && !errors.Is(err, tiered.ErrL2Unavailable) {
		m.cfg.Logger.Warn("echocache: response not stored", "path", req.URL.Path, "err", err)
		return
	}
	m.count(outStored)
}

// keep is how long the cache keeps a response: its lifetime and its stale
// windows and, for one with a validator, as long again (a minute to an
// hour) to be revalidated with a cheap 304 rather than fetched anew.
func (m *Middleware) keep(h http.Header, received time.Time) time.Duration {
	cc := httpcache.ParseCacheControl(h.Values("Cache-Control"))
	lifetime := m.cfg.Policy.Lifetime(h, received)
	keep := lifetime + max(cc.StaleWhileRevalidate.Value, cc.StaleIfError.Value)
	if h.Get("ETag") != "" || h.Get("Last-Modified") != "" {
		keep += min(max(lifetime, time.Minute), time.Hour)
	}
	return max(keep, time.Second)
}

// variantHash names a variant key in its URL's index. FNV, not maphash:
// every replica must compute the same value.
func variantHash(vkey string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(vkey))
	return h.Sum64()
}

// revalidate asks the handler whether stored is still current, with a
// conditional request made from its validators (RFC 9111 §4.3.1). A 304
// refreshes the stored response, which answers the client; another answer
// goes to the client and is stored as for a miss; a failure (an error or a
// 5xx) serves stored if stale-if-error allows it.
func (m *Middleware) revalidate(c echo.Context, next echo.HandlerFunc, key string, stored Response, age, lifetime time.Duration) error {
	req := c.Request()
	// The handler answers into a buffer: its 304 is for the cache, not the
	// client. The buffer starts with what outer middleware set, as the
	// client's response would have.
	orig := c.Response()
	pre := orig.Header().Clone()
	buf := &bufferWriter{header: orig.Header().Clone(), Code: http.StatusOK}
	requested := time.Now()
	err := func() error {
		c.SetRequest(conditional(req, stored))
		c.SetResponse(echo.NewResponse(buf, c.Echo()))
		// Restored even if the handler panics, for a Recover middleware
		// outside this one to answer the client.
		defer func() { c.SetRequest(req); c.SetResponse(orig) }()
		return next(c)
	}()
	received := time.Now()
	status := buf.Code
	if err != nil || status >= 500 {
		if httpcache.StaleIfError(req, stored.Header, max(age-lifetime, 0)) {
			m.count(outStale)
			return m.write(c, stored, age, "hit; fwd=stale; detail=stale-if-error")
		}
		if err != nil {
			return err
		}
	}
	if status == http.StatusNotModified {
		fresh, tags := refreshed(stored, handlerHeader(buf.Header(), pre), requested, received)
		m.store(c, key, fresh.Status, fresh.Header, fresh.Body, tags, requested, received)
		m.count(outRevalidated)
		return m.write(c, fresh, 0, "fwd=stale; fwd-status=304")
	}
	// A new response: to the client, and stored if it may be.
	h := orig.Header()
	for k, v := range buf.Header() {
		h[k] = v
	}
	tags := takeSurrogateKeys(h)
	m.count(outMiss)
	m.status(c, "fwd=stale; fwd-status="+strconv.Itoa(status))
	orig.WriteHeader(status)
	if _, werr := orig.Write(buf.Body.Bytes()); werr != nil {
		return werr
	}
	if buf.wrote {
		m.store(c, key, status, handlerHeader(h, pre), buf.Body.Bytes(), tags, requested, received)
	}
	return nil
}

// revalidateAsync revalidates stored in the background, once per URL at a
// time, while the client is served the stale response
// (stale-while-revalidate, RFC 5861 §3). The handler runs in a context of
// its own, since c is recycled once the request ends.
func (m *Middleware) revalidateAsync(c echo.Context, next echo.HandlerFunc, key string, stored Response) {
	wait, leader := m.join("r|" + key)
	if !leader {
		return
	}
	req := c.Request()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(req.Context()), m.cfg.RevalidateTimeout)
	cond := conditional(req.Clone(ctx), stored)
	buf := &bufferWriter{header: http.Header{}, Code: http.StatusOK}
	bc := c.Echo().NewContext(cond, buf)
	bc.SetPath(c.Path())
	bc.SetParamNames(c.ParamNames()...)
	bc.SetParamValues(c.ParamValues()...)
	go func() {
		defer m.leave("r|"+key, wait)
		defer cancel()
		defer func() {
			// A panicking handler must not take the process down from a
			// goroutine no Recover middleware watches; the stale response
			// stays.
			if r := recover(); r != nil {
				m.cfg.Logger.Error("echocache: background revalidation panicked", "path", cond.URL.Path, "panic", r)
			}
		}()
		requested := time.Now()
		if err := next(bc); err != nil || buf.Code >= 500 || !buf.wrote {
			return // the stale response stays, until it is past its windows
		}
		received := time.Now()
		if buf.Code == http.StatusNotModified {
			fresh, tags := refreshed(stored, buf.Header(), requested, received)
			m.store(bc, key, fresh.Status, fresh.Header, fresh.Body, tags, requested, received)
			return
		}
		tags := takeSurrogateKeys(buf.Header())
		m.store(bc, key, buf.Code, buf.Header(), buf.Body.Bytes(), tags, requested, received)
	}()
}

// conditional returns a copy of req that asks the handler whether stored
// is current, with stored's validators (RFC 9111 §4.3.1) in place of the
// client's own conditions.
func conditional(req *http.Request, stored Response) *http.Request {
	cond := req.Clone(req.Context())
	for _, f := range []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range"} {
		cond.Header.Del(f)
	}
	if etag := stored.Header.Get("ETag"); etag != "" {
		cond.Header.Set("If-None-Match", etag)
	}
	if lm := stored.Header.Get("Last-Modified"); lm != "" {
		cond.Header.Set("If-Modified-Since", lm)
	}
	return cond
}

// refreshed is stored updated by a 304's header (RFC 9111 §4.3.4: its
// fields replace the stored ones, but for those describing the body), and
// the Surrogate-Keys it carries.
func refreshed(stored Response, h304 http.Header, requested, received time.Time) (Response, []string) {
	h := stored.Header.Clone()
	for k, v := range h304 {
		switch k {
		case "Content-Length", "Content-Type", "Content-Encoding", "Cache-Status":
		default:
			h[k] = v
		}
	}
	// The stored Surrogate-Keys stay, with any the 304 adds.
	var tags []string
	for _, t := range stored.Tags {
		if k, ok := strings.CutPrefix(t, "sk:"); ok {
			tags = append(tags, k)
		}
	}
	tags = append(tags, takeSurrogateKeys(h)...)
	return Response{Status: stored.Status, Header: h, Body: stored.Body, Requested: requested, Received: received}, tags
}

// write answers from a stored response: 304 for a matching conditional
// request, else the stored status, headers and body, with Age.
func (m *Middleware) write(c echo.Context, stored Response, age time.Duration, status string) error {
	return m.writeStatus(c, stored, age, []string{m.cfg.Name + "; " + status})
}

// writeStatus is write with the Cache-Status value ready: a fresh hit,
// the hot path, shares one (a header value is never modified in place).
func (m *Middleware) writeStatus(c echo.Context, stored Response, age time.Duration, status []string) error {
	res := c.Response()
	h := res.Header()
	for k, v := range stored.Header {
		h[k] = v
	}
	h["Age"] = []string{strconv.FormatInt(int64(age/time.Second), 10)} // canonical name: no Set
	h["Cache-Status"] = status
	// Preconditions apply only to what would be a 2xx (RFC 9110 §13.2.1).
	if stored.Status >= 200 && stored.Status < 300 && httpcache.NotModified(c.Request(), stored.Header) {
		for _, f := range []string{"Content-Length", "Content-Type", "Content-Encoding"} {
			h.Del(f)
		}
		res.WriteHeader(http.StatusNotModified)
		return nil
	}
	res.WriteHeader(stored.Status)
	if c.Request().Method == http.MethodHead {
		return nil
	}
	_, err := res.Write(stored.Body)
	return err
}

// status sets the Cache-Status header (RFC 9211). It names the cache and
// says what happened; it never carries the key.
func (m *Middleware) status(c echo.Context, params string) {
	c.Response().Header()["Cache-Status"] = []string{m.cfg.Name + "; " + params}
}
