package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-redis/redis_rate/v10"
	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/middleware/echocache"
	"github.com/tiercache/tiercache/middleware/httpcache"
	"github.com/tiercache/tiercache/tiered"
	"github.com/tiercache/tiercache/warmup"
)

// Config is what a catalog replica runs with.
type Config struct {
	DatabaseURL string        // "" for the embedded SQLite file; see openStore
	Seed        int           // products created in an empty database
	DBDelay     time.Duration // added to every query
	DBConns     int           // queries at once, the delay included; 0: no limit
	Redis       redis.UniversalClient
	RedisKind   string // "redis", "embedded" or "none", for /debug/cache
	CacheOff    bool   // no cache at all: every request queries the database
	L1Bytes     int64  // the L1 budget of each cache (products, responses)
	PurgeToken  string // enables POST /admin/purge with "Authorization: Bearer <token>"
	WriteRate   int    // writes per second per client (burst as many); <0: no limit
	TrustProxy  bool   // take the client's address from X-Forwarded-For (set only behind a proxy that sets it)
	WarmFile    string // keys to warm from, one per line; "" for the hot keys
	PageSize    int
	Namespace   string
	Logger      *slog.Logger
	Telemetry   *telemetry
}

// App is one replica of the catalog service.
type App struct {
	cfg      Config
	db       *store
	products *tiered.Cache[Product]
	pages    *tiered.Cache[echocache.Response]
	http     *echocache.Middleware
	limiter  *redis_rate.Limiter
	// limiterDown is when (Unix ns) to try the limiter again after it failed.
	limiterDown atomic.Int64
	ready       *warmup.Tracker
	lat         latencies
	started     time.Time
	e           *echo.Echo
	log         *slog.Logger
}

// NewApp opens the database (creating and seeding it if empty), builds the
// caches and the routes, and starts the warm-up in the background.
func NewApp(ctx context.Context, cfg Config) (*App, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = 20
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "catalog"
	}
	if cfg.WriteRate == 0 {
		cfg.WriteRate = 20
	}
	if cfg.Telemetry == nil {
		t, err := newTelemetry(ctx, "")
		if err != nil {
			return nil, err
		}
		cfg.Telemetry = t
	}
	a := &App{cfg: cfg, log: cfg.Logger, started: time.Now(), ready: &warmup.Tracker{}}
	tm := cfg.Telemetry
	var err error
	if a.db, err = openStore(ctx, cfg.DatabaseURL, cfg.DBDelay, cfg.DBConns, tm.tracers, tm.meters); err != nil {
		return nil, err
	}
	seeded, err := a.db.migrate(ctx, cfg.Seed)
	if err != nil {
		a.db.Close()
		return nil, err
	}
	if seeded > 0 {
		a.log.Info("seeded the database", "products", seeded)
	}
	if !cfg.CacheOff {
		if err := a.openCaches(); err != nil {
			a.db.Close()
			return nil, err
		}
		if cfg.Redis != nil {
			a.limiter = redis_rate.NewLimiter(cfg.Redis)
		}
	}
	if err := a.routes(); err != nil {
		a.Close()
		return nil, err
	}
	go a.warm(context.WithoutCancel(ctx))
	return a, nil
}

func (a *App) openCaches() error {
	tm := a.cfg.Telemetry
	var err error
	hot := 0
	if a.cfg.Redis != nil {
		hot = 1000
	}
	a.products, err = tiered.New[Product](tiered.Config{
		Redis: a.cfg.Redis, Namespace: a.cfg.Namespace, TTL: 10 * time.Minute, StaleTTL: time.Minute,
		L1MaxBytes: a.cfg.L1Bytes, HotKeys: hot, HotKeysInterval: 10 * time.Second,
		Logger: a.log, TracerProvider: tm.tracers, MeterProvider: tm.meters,
	})
	if err != nil {
		return fmt.Errorf("product cache: %w", err)
	}
	a.pages, err = tiered.New[echocache.Response](tiered.Config{
		Redis: a.cfg.Redis, Namespace: a.cfg.Namespace + "-http", TTL: 10 * time.Minute, L1MaxBytes: a.cfg.L1Bytes,
		Logger: a.log, TracerProvider: tm.tracers, MeterProvider: tm.meters,
	})
	if err != nil {
		a.products.Close()
		return fmt.Errorf("page cache: %w", err)
	}
	cfg := echocache.DefaultConfig
	cfg.Cache, cfg.Logger, cfg.MeterProvider = a.pages, a.log, tm.meters
	if a.http, err = echocache.NewMiddleware(cfg); err != nil {
		a.products.Close()
		a.pages.Close()
		return fmt.Errorf("http cache: %w", err)
	}
	return nil
}

// Close releases the caches and the database.
func (a *App) Close() {
	if a.products != nil {
		a.products.Close()
	}
	if a.pages != nil {
		a.pages.Close()
	}
	a.db.Close()
}

// Handler is the replica's HTTP handler.
func (a *App) Handler() http.Handler { return a.e }

func (a *App) routes() error {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	// The rate limit is per client address: take it from the connection,
	// or from X-Forwarded-For only behind a proxy that sets it, or any
	// client could pick its own address and its own limit.
	e.IPExtractor = echo.ExtractIPDirect()
	if a.cfg.TrustProxy {
		e.IPExtractor = echo.ExtractIPFromXFFHeader()
	}
	obs, err := observe(a.cfg.Telemetry.tracers, a.cfg.Telemetry.meters, &a.lat)
	if err != nil {
		return err
	}
	e.Use(obs)
	e.HTTPErrorHandler = a.errorHandler(e)
	g := e.Group("/products", onlyParams("category", "page"))
	if a.http != nil {
		g.Use(a.http.Handler)
	}
	g.GET("", a.listProducts)
	g.GET("/:id", a.getProduct)
	g.PUT("/:id", a.updateProduct, a.rateLimit)
	g.POST("", a.createProduct, a.rateLimit)
	g.DELETE("/:id", a.deleteProduct, a.rateLimit)

	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	ready := a.ready.Handler(0)
	e.GET("/readyz", func(c echo.Context) error {
		if a.products == nil {
			return c.String(http.StatusOK, "ready")
		}
		return ready(c)
	})
	e.GET("/metrics", echo.WrapHandler(a.cfg.Telemetry.metrics))
	e.GET("/debug/cache", a.debugPage)
	e.GET("/debug/cache.json", a.debugJSON)
	e.POST("/admin/purge", a.purge)
	a.e = e
	return nil
}

func productKey(id int) string { return "product:" + strconv.Itoa(id) }

// keyID is productKey's inverse; ok is false for a key that names no id.
func keyID(key string) (id int, ok bool) {
	id, err := strconv.Atoi(strings.TrimPrefix(key, "product:"))
	return id, err == nil
}

// onlyParams refuses query parameters other than names: the HTTP cache
// keys on the whole query, and any client could otherwise fill it (and the
// database) with "?junk=1", "?junk=2", ...
func onlyParams(names ...string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			for p := range c.QueryParams() {
				if !slices.Contains(names, p) {
					return echo.NewHTTPError(http.StatusBadRequest, "unknown query parameter "+strconv.Quote(p))
				}
			}
			return next(c)
		}
	}
}

// errorHandler logs server errors, which Echo's default handler does not,
// and answers a database that cannot be reached with 503 and Retry-After.
func (a *App) errorHandler(e *echo.Echo) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		var he *echo.HTTPError
		if !errors.As(err, &he) {
			a.log.ErrorContext(c.Request().Context(), "request failed", "method", c.Request().Method, "path", c.Path(), "err", err)
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, driver.ErrBadConn) || isNetError(err) {
				c.Response().Header().Set("Retry-After", "1")
				err = echo.NewHTTPError(http.StatusServiceUnavailable, "the database is unavailable")
			}
		}
		e.DefaultHTTPErrorHandler(err, c)
	}
}

// isNetError reports a failure to reach the database over the network
// (refused, reset, timed out).
func isNetError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

// loadProduct is the product cache's loader.
func (a *App) loadProduct(ctx context.Context, key string) (Product, error) {
	id, ok := keyID(key)
	if !ok {
		return Product{}, tiered.ErrNotFound
	}
	return a.db.product(ctx, id)
}

// loadProducts is the warm-up's loader: one query per batch of keys.
// Keys that name no product are left out, which caches them as absent.
func (a *App) loadProducts(ctx context.Context, keys []string) (map[string]Product, error) {
	ids := make([]int, 0, len(keys))
	for _, k := range keys {
		if id, ok := keyID(k); ok {
			ids = append(ids, id)
		}
	}
	ps, err := a.db.products(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Product, len(ps))
	for id, p := range ps {
		out[productKey(id)] = p
	}
	return out, nil
}

func (a *App) product(ctx context.Context, id int) (Product, error) {
	if a.products == nil {
		return a.db.product(ctx, id)
	}
	return a.products.GetOrLoad(ctx, productKey(id), a.loadProduct)
}

func pathID(c echo.Context) (int, error) {
	id, err := strconv.Atoi(c.Param("id"))
	if err != nil || id <= 0 {
		return 0, echo.NewHTTPError(http.StatusBadRequest, "id must be a positive integer")
	}
	return id, nil
}

// cacheable marks a GET response for the HTTP cache: fresh for a minute in
// the shared cache (every write purges what it changed there), while
// browsers and other caches revalidate every time with the ETag, since
// nothing purges them. The data is public, so the response may be shared
// whatever the request's credentials.
func cacheable(c echo.Context, etag string, tags ...string) {
	h := c.Response().Header()
	h.Set("Cache-Control", "public, max-age=0, s-maxage=60, stale-if-error=300")
	h.Set("ETag", etag)
	h.Set("Surrogate-Key", strings.Join(append(tags, "all"), " "))
}

func (a *App) getProduct(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	p, err := a.product(c.Request().Context(), id)
	switch {
	case errors.Is(err, tiered.ErrNotFound):
		return echo.NewHTTPError(http.StatusNotFound, "no such product")
	case err != nil:
		return fmt.Errorf("product %d: %w", id, err)
	}
	etag := fmt.Sprintf(`"p%d-v%d"`, p.ID, p.Version)
	cacheable(c, etag, productKey(id))
	if httpcache.NotModified(c.Request(), c.Response().Header()) {
		return c.NoContent(http.StatusNotModified)
	}
	return c.JSON(http.StatusOK, p)
}

func (a *App) listProducts(c echo.Context) error {
	category := c.QueryParam("category")
	page := 1
	if s := c.QueryParam("page"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100_000 {
			return echo.NewHTTPError(http.StatusBadRequest, "page must be a positive integer")
		}
		page = n
	}
	if len(category) > 64 || !validText(category) {
		return echo.NewHTTPError(http.StatusBadRequest, "category must be at most 64 bytes of UTF-8 text")
	}
	ps, err := a.db.list(c.Request().Context(), category, page, a.cfg.PageSize)
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	// The page's ETag: the ids and versions it shows.
	var sum uint64 = 14695981039346656037
	for _, p := range ps {
		for _, v := range []int{p.ID, p.Version} {
			sum = (sum ^ uint64(v)) * 1099511628211
		}
	}
	cacheable(c, fmt.Sprintf(`"l%x"`, sum), listTag(category))
	if httpcache.NotModified(c.Request(), c.Response().Header()) {
		return c.NoContent(http.StatusNotModified)
	}
	return c.JSON(http.StatusOK, map[string]any{"category": category, "page": page, "products": ps})
}

// listTag tags the list pages of a category ("" for the unfiltered list).
func listTag(category string) string {
	if category == "" {
		return "list:all"
	}
	return "category:" + category
}

// afterWrite brings every replica up to date with a product write: it
// removes the product from the product cache (a Set could land after the
// Set of a newer concurrent write; a Delete cannot go wrong that way) and
// purges its response and the list pages that may show it, before the
// write's response goes out.
func (a *App) afterWrite(ctx context.Context, id int, categories ...string) error {
	if a.products == nil {
		return nil
	}
	tags := []string{productKey(id), listTag("")}
	for _, c := range categories {
		tags = append(tags, listTag(c))
	}
	return a.purgeTwice(ctx, productKey(id), func(ctx context.Context) error {
		return errors.Join(a.products.Delete(ctx, productKey(id)), a.http.PurgeTags(ctx, tags...))
	})
}

// purgeTwice runs purge now and again secondPurgeAfter after it has
// returned, detached from the request: a client that hangs up must not
// leave stale copies behind. The HTTP cache stores a response after the
// client has it, so a GET that read before the purge may store its page
// after it; the second purge removes that page (the "delayed double
// delete"). It is timed from the first purge's end, not its start: when
// Redis stalls, the first purge takes as long as the stores it races with,
// and a second purge timed from its start would run alongside it.
func (a *App) purgeTwice(ctx context.Context, what string, purge func(ctx context.Context) error) error {
	run := func() error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return purge(ctx)
	}
	err := run()
	time.AfterFunc(secondPurgeAfter, func() {
		if err := run(); err != nil && !errors.Is(err, tiered.ErrClosed) {
			a.log.Warn("second purge failed", "what", what, "err", err)
		}
	})
	return err
}

// secondPurgeAfter is how long after a write's first purge returned it is
// repeated: longer than a GET that read before the write takes to store
// its response, which under Redis stalls includes a page store's retries
// (up to the caches' 1 s WriteTimeout). See docs/catalog.md.
const secondPurgeAfter = 1500 * time.Millisecond

// decodePatch reads a JSON body strictly: application/json, known fields
// only, one value, at most maxBody bytes. A typo in a field name must be
// an error, not a write that changes nothing and bumps the version.
func decodePatch(c echo.Context) (Patch, error) {
	var p Patch
	req := c.Request()
	if ct, _, _ := strings.Cut(req.Header.Get("Content-Type"), ";"); strings.TrimSpace(ct) != "application/json" {
		return p, echo.NewHTTPError(http.StatusUnsupportedMediaType, "send application/json")
	}
	dec := json.NewDecoder(http.MaxBytesReader(c.Response(), req.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return p, echo.NewHTTPError(http.StatusBadRequest, "bad JSON body: "+err.Error())
	}
	if dec.More() {
		return p, echo.NewHTTPError(http.StatusBadRequest, "bad JSON body: data after the object")
	}
	if err := validPatch(p); err != nil {
		return p, echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
	return p, nil
}

const maxBody = 64 << 10

func validPatch(p Patch) error {
	switch {
	case p.Name == nil && p.Category == nil && p.PriceCents == nil && p.Stock == nil:
		return errors.New("nothing to change: give name, category, price_cents or stock")
	case p.Name != nil && (*p.Name == "" || len(*p.Name) > 200 || !validText(*p.Name)):
		return errors.New("name must be 1 to 200 bytes of UTF-8 text")
	case p.Category != nil && (*p.Category == "" || len(*p.Category) > 64 || !validText(*p.Category)):
		return errors.New("category must be 1 to 64 bytes of UTF-8 text")
	case p.PriceCents != nil && (*p.PriceCents < 0 || *p.PriceCents > math.MaxInt32):
		return errors.New("price_cents must be 0 to 2^31-1")
	case p.Stock != nil && (*p.Stock < 0 || *p.Stock > math.MaxInt32):
		return errors.New("stock must be 0 to 2^31-1")
	}
	return nil
}

// validText is UTF-8 without NUL, which PostgreSQL refuses in text.
func validText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

func (a *App) updateProduct(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	patch, err := decodePatch(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	before, after, err := a.db.update(ctx, id, patch)
	switch {
	case errors.Is(err, tiered.ErrNotFound):
		return echo.NewHTTPError(http.StatusNotFound, "no such product")
	case err != nil:
		return fmt.Errorf("update %d: %w", id, err)
	}
	if err := a.afterWrite(ctx, id, before.Category, after.Category); err != nil {
		return a.invalidationPending(c, after, err)
	}
	return c.JSON(http.StatusOK, after)
}

func (a *App) createProduct(c echo.Context) error {
	patch, err := decodePatch(c)
	if err != nil {
		return err
	}
	if patch.Name == nil || patch.Category == nil {
		return echo.NewHTTPError(http.StatusBadRequest, "name and category are required")
	}
	p := Product{Name: *patch.Name, Category: *patch.Category}
	if patch.PriceCents != nil {
		p.PriceCents = *patch.PriceCents
	}
	if patch.Stock != nil {
		p.Stock = *patch.Stock
	}
	ctx := c.Request().Context()
	p, err = a.db.create(ctx, p)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	c.Response().Header().Set("Location", "/products/"+strconv.Itoa(p.ID))
	if err := a.afterWrite(ctx, p.ID, p.Category); err != nil {
		return a.invalidationPending(c, p, err)
	}
	return c.JSON(http.StatusCreated, p)
}

func (a *App) deleteProduct(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	p, err := a.db.remove(ctx, id)
	switch {
	case errors.Is(err, tiered.ErrNotFound):
		return echo.NewHTTPError(http.StatusNotFound, "no such product")
	case err != nil:
		return fmt.Errorf("delete %d: %w", id, err)
	}
	if err := a.afterWrite(ctx, id, p.Category); err != nil {
		return a.invalidationPending(c, p, err)
	}
	return c.NoContent(http.StatusNoContent)
}

// invalidationPending answers a write that the database has but whose
// cache invalidation did not go through: Redis did not answer within the
// caches' WriteTimeout (errors.Is(err, tiered.ErrL2Unavailable)), or the
// replica is closing. It is 503, Retry-After: 1, Cache-Invalidation:
// pending, and the product as the database has it (for a DELETE, as it
// was). A 2xx promises that no replica serves the old version past the
// bound; here other replicas may, until the caches' outboxes replay the
// invalidation, which they do as soon as Redis answers. A PUT or DELETE
// may be retried as it is (a DELETE then answers 404); a POST created the
// product, which Location names, and must not be sent again.
func (a *App) invalidationPending(c echo.Context, p Product, err error) error {
	a.log.WarnContext(c.Request().Context(), "write stored; its cache invalidation is pending", "id", p.ID, "err", err)
	h := c.Response().Header()
	h.Set("Retry-After", "1")
	h.Set("Cache-Invalidation", "pending")
	return c.JSON(http.StatusServiceUnavailable, p)
}

// rateLimit limits writes per client with a GCRA limiter in Redis
// (go-redis/redis_rate), shared by every replica. Without Redis, or when
// it fails, writes go through: the limiter protects the database, and an
// outage of the cache must not stop the shop.
func (a *App) rateLimit(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if a.limiter == nil || a.cfg.WriteRate < 0 {
			return next(c)
		}
		if time.Now().UnixNano() < a.limiterDown.Load() {
			return next(c)
		}
		ctx, cancel := context.WithTimeout(c.Request().Context(), 250*time.Millisecond)
		res, err := a.limiter.Allow(ctx, a.cfg.Namespace+":writes:"+c.RealIP(), redis_rate.PerSecond(a.cfg.WriteRate))
		cancel()
		if err != nil {
			// Skip the limiter for a second rather than make every write
			// wait for a Redis that does not answer.
			a.limiterDown.Store(time.Now().Add(time.Second).UnixNano())
			a.log.WarnContext(c.Request().Context(), "rate limiter unavailable; allowing writes for a second", "err", err)
			return next(c)
		}
		if res.Allowed == 0 {
			c.Response().Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(res.RetryAfter.Seconds())))))
			return echo.NewHTTPError(http.StatusTooManyRequests, "too many writes")
		}
		return next(c)
	}
}

// purge is POST /admin/purge?product=ID | tag=T | all=1, with the token
// from PURGE_TOKEN as a bearer token. Without a token configured it is
// off. A product purge drops its data, its response and its list pages;
// "all" drops every response and every product's data.
func (a *App) purge(c echo.Context) error {
	if a.cfg.PurgeToken == "" {
		return echo.NewHTTPError(http.StatusForbidden, "purging is off (no PURGE_TOKEN)")
	}
	// The scheme is case-insensitive (RFC 9110 §11.1). Hashes of equal
	// length, so that the comparison's time says nothing about the token,
	// not even its length.
	scheme, token, _ := strings.Cut(c.Request().Header.Get("Authorization"), " ")
	got := sha256.Sum256([]byte(strings.TrimLeft(token, " ")))
	want := sha256.Sum256([]byte(a.cfg.PurgeToken))
	if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="purge"`)
		return echo.NewHTTPError(http.StatusUnauthorized, "purge needs the bearer token")
	}
	if a.http == nil {
		return c.NoContent(http.StatusNoContent)
	}
	ctx := c.Request().Context()
	var err error
	switch {
	case c.QueryParam("product") != "":
		id, perr := strconv.Atoi(c.QueryParam("product"))
		if perr != nil || id <= 0 {
			return echo.NewHTTPError(http.StatusBadRequest, "product must be a positive integer")
		}
		var cats []string
		if p, err := a.db.product(ctx, id); err == nil {
			cats = append(cats, p.Category) // its list pages too
		}
		err = a.afterWrite(ctx, id, cats...)
	case c.QueryParam("tag") != "":
		tag := c.QueryParam("tag")
		err = a.purgeTwice(ctx, "tag "+tag, func(ctx context.Context) error { return a.http.PurgeTags(ctx, tag) })
	case c.QueryParam("all") == "1":
		err = errors.Join(
			a.purgeTwice(ctx, "all", func(ctx context.Context) error { return a.http.PurgeTags(ctx, "all") }),
			a.purgeProducts(ctx)) // product fills are fenced by their leases: once is enough
	default:
		return echo.NewHTTPError(http.StatusBadRequest, "give product=ID, tag=T or all=1")
	}
	if err != nil {
		return fmt.Errorf("purge: %w", err)
	}
	return c.NoContent(http.StatusNoContent)
}

// purgeProducts removes every product from the product cache, in every
// replica: after the database was changed behind the service's back.
func (a *App) purgeProducts(ctx context.Context) error {
	ids, err := a.db.ids(ctx)
	if err != nil {
		return err
	}
	for chunk := range slices.Chunk(ids, 500) {
		keys := make([]string, len(chunk))
		for i, id := range chunk {
			keys[i] = productKey(id)
		}
		if err := a.products.Delete(ctx, keys...); err != nil {
			return err
		}
	}
	return nil
}

// warm fills the product cache at start from WarmFile or, with Redis, from
// the keys the other replicas read most; /readyz answers 503 until done.
func (a *App) warm(ctx context.Context) {
	if a.products == nil {
		return // no cache: ready at once
	}
	src := warmup.FromSlice(nil)
	switch {
	case a.cfg.WarmFile != "":
		f, err := os.Open(a.cfg.WarmFile)
		if err != nil {
			a.log.Warn("warm-up file unreadable; starting cold", "err", err)
			break
		}
		defer f.Close()
		src = warmup.FromReader(f)
	case a.cfg.Redis != nil:
		src = warmup.FromHotKeys(a.products, 1000)
	}
	_, _ = warmup.Run(ctx, a.products, src, warmup.Config[Product]{
		LoadMany: a.loadProducts, Concurrency: 4, Tracker: a.ready, Logger: a.log,
	})
}
