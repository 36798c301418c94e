package tiered

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eko/gocache/lib/v4/store"
	gocacheredis "github.com/eko/gocache/store/redis/v4"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"github.com/tiercache/tiercache/internal/clock"
	"github.com/tiercache/tiercache/internal/fence"
	"github.com/tiercache/tiercache/internal/hotkeys"
	"github.com/tiercache/tiercache/internal/l1"
	"github.com/tiercache/tiercache/internal/l2"
	"github.com/tiercache/tiercache/internal/outbox"
	"github.com/tiercache/tiercache/internal/redisclient"
	"github.com/tiercache/tiercache/invalidation"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

// ErrNotFound reports that a key is in neither tier, or that a loader said
// so: a loader returns it (or an error wrapping it) to have the absence
// cached for Config.NegativeTTL.
var ErrNotFound = errors.New("tiered: not found")

// ErrClosed is returned by the reads and writes of a Cache after Close.
var ErrClosed = errors.New("tiered: cache closed")

// ErrL2Unavailable reports that L2 could not be used. Writes return it when
// they could not make their L2 change or invalidation within
// Config.WriteTimeout; reads only with Config.Strict, while the breaker is
// open or this process holds invalidations Redis has not had. Errors that
// wrap it also wrap the cause.
var ErrL2Unavailable = l2.ErrUnavailable

// ErrInvalidKey and ErrValueTooLarge report input over the Config limits.
var (
	ErrInvalidKey    = errors.New("tiered: invalid key")
	ErrValueTooLarge = errors.New("tiered: value too large")
)

// LoadFunc loads the value for key from the source of truth. It returns
// ErrNotFound (or an error wrapping it) when the key does not exist there.
type LoadFunc[V any] func(ctx context.Context, key string) (V, error)

// Cache is a two-tier cache of values of type V: an in-process L1 in front
// of a shared L2. It is safe for concurrent use.
type Cache[V any] struct {
	cfg      Config
	l1       localTier[V]
	l2       *l2.Tier // nil: L1 only
	fence    fencer
	outbox   *outbox.Outbox
	bus      *invalidation.Bus // nil: no Redis, or DisableInvalidation
	flights  flights[V]
	counters counters
	metrics  *instruments
	tracer   trace.Tracer
	logL2    rate.Sometimes // one L2 warning a second: when Redis is down, every call fails

	closeOnce sync.Once
	closed    atomic.Bool

	clock clock.Coarse
	beta  float64          // XFetch's β; 0: no early refresh
	hot   *hotkeys.Sampler // nil: Config.HotKeys off
	// bg counts the background goroutines (flights, refreshes, the outbox
	// replay), which Close cancels and waits for; bgMu guards their start.
	bg       sync.WaitGroup
	bgMu     sync.Mutex
	closing  context.Context
	closeAll context.CancelFunc
}

// New returns a Cache configured by cfg. With cfg.Redis (or cfg.Store) set it
// has both tiers; otherwise it is an L1-only cache.
func New[V any](cfg Config) (*Cache[V], error) {
	return newCache(cfg, func(c *Cache[V]) (localTier[V], error) {
		return l1.New[item[V]](c.cfg.L1MaxBytes, &c.clock, c.l1Requests)
	})
}

// newCache is New with the L1 that local makes for c.
func newCache[V any](cfg Config, local func(c *Cache[V]) (localTier[V], error)) (*Cache[V], error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Cache[V]{cfg: cfg, clock: clock.Coarse{Source: cfg.Clock}, fence: fence.New(), outbox: outbox.New(), logL2: rate.Sometimes{Interval: time.Second}, beta: max(cfg.EarlyRefresh, 0)}
	c.closing, c.closeAll = context.WithCancel(context.Background())
	if c.l1, err = local(c); err != nil {
		return nil, fmt.Errorf("tiered: L1: %w", err)
	}
	st := cfg.Store
	if st == nil && cfg.Redis != nil {
		st = gocacheredis.NewRedis(cfg.Redis)
		redisclient.WarnIfUnbounded(cfg.Logger, cfg.Redis)
		if cc, ok := cfg.Redis.(*redis.ClusterClient); ok {
			redisclient.Watch(cc)
		}
	}
	c.counters.breaker.Store(int32(gobreaker.StateClosed))
	if st != nil {
		c.l2 = c.newL2(st, cfg.Redis)
	}
	tp := cfg.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	c.tracer = tp.Tracer(instrumentationName)
	mp := cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if c.metrics, err = newInstruments(c, mp.Meter(instrumentationName)); err != nil {
		c.l1.Close()
		c.clock.Close()
		return nil, fmt.Errorf("tiered: metrics: %w", err)
	}
	if cfg.Redis != nil && !cfg.DisableInvalidation {
		if err := c.startBus(mp); err != nil {
			_ = c.metrics.reg.Unregister()
			c.l1.Close()
			c.clock.Close()
			return nil, fmt.Errorf("tiered: invalidation bus: %w", err)
		}
	}
	if cfg.HotKeys > 0 && cfg.Redis != nil {
		c.hot = hotkeys.New(cfg.HotKeys, cfg.HotKeysInterval)
		go c.hot.Run(c.publishHot)
	}
	return c, nil
}

// newL2 builds the L2 tier on st; rdb, if not nil, carries what the
// store's GET/SET/DEL cannot (leases, scripts, tag sets).
func (c *Cache[V]) newL2(st store.StoreInterface, rdb redis.UniversalClient) *l2.Tier {
	return l2.New(l2.Config{
		Store:           st,
		Redis:           rdb,
		Timeout:         c.cfg.L2Timeout,
		BreakerFailures: c.cfg.BreakerFailures,
		BreakerCooldown: c.cfg.BreakerCooldown,
		Name:            c.cfg.Namespace,
		Held:            c.outbox.Held(),
		Clock:           c.cfg.Clock,
		OnStateChange: func(from, to gobreaker.State) {
			c.counters.breaker.Store(int32(to))
			if to == gobreaker.StateOpen {
				c.counters.breakerOpens.Add(1)
			}
			c.cfg.Logger.Warn("tiercache: L2 circuit breaker changed state",
				"namespace", c.cfg.Namespace, "from", breakerName(from), "to", breakerName(to))
		},
	})
}

// startBus starts the invalidation bus, and waits briefly for it, so that
// the first fills are not flushed when it turns fresh; if Redis is down,
// it goes on: L1 then serves only young copies.
func (c *Cache[V]) startBus(mp metric.MeterProvider) error {
	cfg := c.cfg
	var err error
	c.bus, err = invalidation.New(cfg.Redis, invalidation.Config{
		Channel:         "tiercache:inv:" + cfg.Namespace,
		Evict:           c.invalidateLocalKeys,
		EvictTags:       c.invalidateLocalTags,
		Flush:           c.flush,
		StalenessBound:  cfg.StalenessBound,
		Window:          cfg.InvalidationWindow,
		PublishTimeout:  max(cfg.L2Timeout, cfg.StalenessBound/4), // a lost one flushes the others
		MaxKeyBytes:     cfg.MaxKeyBytes,
		MaxMessageBytes: max(64<<10, 2*cfg.MaxKeyBytes+1024),
		Logger:          cfg.Logger,
		MeterProvider:   mp,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(cfg.StalenessBound/2, time.Second))
	defer cancel()
	c.bus.WaitFresh(ctx)
	return nil
}

const instrumentationName = "github.com/tiercache/tiercache/tiered"

// Get returns the value cached for key: from L1, else from L2 (copying it
// into L1). A key in neither tier, or cached as absent, gives an error for
// which errors.Is(err, ErrNotFound) holds.
func (c *Cache[V]) Get(ctx context.Context, key string) (V, error) {
	return c.get(ctx, "tiered.Get", key, nil, nil)
}

// GetOrLoad returns the value for key from L1, else from L2, else from load,
// whose result fills L2 and then L1; concurrent callers for one key in this
// process share one L2 read and one load. An ErrNotFound from load is
// cached as absent for Config.NegativeTTL; other load errors are returned,
// not cached. On L2 failures it goes on to load (Config.Strict also returns
// them). Options apply to a loaded value.
func (c *Cache[V]) GetOrLoad(ctx context.Context, key string, load LoadFunc[V], opts ...Option) (V, error) {
	if load == nil {
		var zero V
		return zero, errors.New("tiered: GetOrLoad with a nil loader")
	}
	return c.get(ctx, "tiered.GetOrLoad", key, load, opts)
}

// flightResult is what one flight hands to every caller that shared it.
type flightResult[V any] struct {
	e    *entry[V]
	tier tier
	err  error // L2 failures that Strict makes visible; the value may still be good
}

func (c *Cache[V]) get(ctx context.Context, op, key string, load LoadFunc[V], opts []Option) (V, error) {
	var zero V
	if err := c.checkKey(key); err != nil {
		return zero, err
	}
	if c.isClosed() {
		return zero, ErrClosed
	}
	// No allocation, and a span only under a recording one: it costs many hits.
	if c.hot != nil {
		c.hot.Sample(key)
	}
	if e, ok := c.l1.Get(key); ok && c.servable(e) && (e.Value.checkAt == 0 || quietAt(e, c.clock.Now())) {
		c.counters.l1Hits.add(key)
		if parent := trace.SpanFromContext(ctx); parent.IsRecording() {
			_, span := c.tracer.Start(ctx, op, trace.WithAttributes(attribute.String("tiercache.tier", "l1")))
			span.End()
		}
		return result(e)
	}
	return c.getMiss(ctx, op, key, load, opts)
}

// servable reports whether an L1 copy may be served: only a young one while
// the bus is not fresh, and none with a tag invalidated since its fill.
func (c *Cache[V]) servable(e *entry[V]) bool {
	return (c.bus == nil || c.bus.Fresh() || c.young(e)) && (e.Value.tags == nil || c.fence.TagsValid(*e.Value.tags))
}

func (c *Cache[V]) young(e *entry[V]) bool {
	if c.clock.Exact()-e.Value.filled <= int64(c.cfg.StalenessBound) {
		return true
	}
	c.counters.staleSkips.Add(1)
	return false
}

// spawn runs f on a goroutine that Close waits for, unless Close has begun.
func (c *Cache[V]) spawn(f func()) bool {
	c.bgMu.Lock()
	defer c.bgMu.Unlock()
	if c.isClosed() {
		return false
	}
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		f()
	}()
	return true
}

// detach returns a context with ctx's values but not its cancellation,
// which Close ends.
func (c *Cache[V]) detach(ctx context.Context) (context.Context, context.CancelFunc) {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(c.closing, cancel)
	return fctx, func() { stop(); cancel() }
}

// safely runs f, turning a panic (a codec's, say) into an error for the
// flight's callers: on a flight's goroutine it would crash the process.
func (c *Cache[V]) safely(key string, f func() flightResult[V]) (res flightResult[V]) {
	defer func() {
		if r := recover(); r != nil {
			res = flightResult[V]{err: fmt.Errorf("tiered: filling %q panicked: %v", key, r)}
		}
	}()
	return f()
}

// sleep waits for d or until ctx is done, and reports whether it slept.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// getMiss is get's miss path, apart so that the hit path stays small.
func (c *Cache[V]) getMiss(ctx context.Context, op, key string, load LoadFunc[V], opts []Option) (V, error) {
	var zero V
	o, err := c.options(opts)
	if err != nil {
		return zero, err
	}
	// A copy due for a look at the clock; fallback keeps a stale-if-error one.
	var fallback *entry[V]
	if e, ok := c.l1.Lookup(key); ok && c.servable(e) {
		switch c.state(e, c.clock.Now(), o, load != nil) {
		case entryRefreshEarly:
			c.refreshAsync(ctx, key, one(load), o, e.Value.fresh)
			fallthrough
		case entryFresh:
			c.counters.l1Hits.add(key)
			return result(e)
		case entryStale:
			if load != nil {
				c.refreshAsync(ctx, key, one(load), o, e.Value.fresh)
			}
			c.counters.l1Hits.add(key)
			c.counters.staleServed.Add(1)
			return result(e)
		case entryStaleIfError:
			fallback = e
		}
	}
	c.counters.l1Misses.Add(1)
	ctx, span := c.tracer.Start(ctx, op, trace.WithAttributes(attribute.String("tiercache.namespace", c.cfg.Namespace)))
	defer span.End()

	fkey := flightKey{flightGet, key} // Gets and loads fly apart (see flightKey)
	if load != nil {
		fkey.kind = flightLoad
	}
	fl, leader := c.flights.Join(fkey)
	if leader {
		fctx, cancel := c.detach(ctx)
		if !c.spawn(func() {
			defer cancel()
			c.flights.Finish(fkey, fl, c.safely(key, func() flightResult[V] { return c.fill(fctx, []string{key}, one(load), o, 0)[0] }))
		}) {
			cancel()
			c.flights.Finish(fkey, fl, flightResult[V]{err: ErrClosed})
		}
	}
	select {
	case <-fl.Done():
	case <-ctx.Done():
		span.SetStatus(codes.Error, "caller gave up")
		return zero, ctx.Err()
	}
	fr, shared := fl.Result()
	if shared {
		c.counters.shared.Add(1)
	}
	if fr.e == nil && fr.err != nil && load != nil && fallback != nil && withinMaxStale(fallback, c.clock.Now()) {
		c.counters.staleOnError.Add(1) // stale-if-error
		fr = flightResult[V]{e: fallback, tier: tierStale}
	}
	if fr.tier == tierStale {
		c.counters.staleServed.Add(1)
	}
	span.SetAttributes(attribute.String("tiercache.tier", fr.tier.String()), attribute.Bool("tiercache.shared", shared))
	if fr.e == nil {
		if fr.err != nil {
			span.RecordError(fr.err)
			span.SetStatus(codes.Error, fr.err.Error())
			return zero, fr.err
		}
		return zero, ErrNotFound
	}
	v, err := result(fr.e)
	if fr.err != nil && c.cfg.Strict {
		err = errors.Join(err, fr.err)
	}
	return v, err
}

// l1Requests reports the L1 hits and misses so far, for L1's window.
func (c *Cache[V]) l1Requests() (hits, misses int64) {
	return c.counters.l1Hits.load(), c.counters.l1Misses.Load()
}

// install puts e into L1 unless an invalidation of key came after ticket t.
// It checks again after the store: an invalidation between check and store
// bumped the fence first, so the second check removes what the first let in.
func (c *Cache[V]) install(key string, e *entry[V], ttl time.Duration, t fence.Ticket, wait bool) {
	if !c.fence.Valid(t) {
		c.counters.fenced.Add(1)
		return
	}
	if len(t.Tags) > 0 {
		e.Value.tags = &t.Tags
	}
	if wait {
		c.l1.Set(key, e, ttl)
	} else {
		c.l1.Fill(key, e, ttl)
	}
	if !c.fence.Valid(t) {
		c.l1.Delete(key)
		c.counters.fenced.Add(1)
	}
}

// guardLoad runs a loader call bounded by Config.LoadTimeout, counted and
// timed, with a panic turned into an error (see safely).
func (c *Cache[V]) guardLoad(ctx context.Context, call func(ctx context.Context) error) (err error) {
	if c.cfg.LoadTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.LoadTimeout)
		defer cancel()
	}
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("loader panicked: %v", r)
		}
		c.counters.loads.Add(1)
		if err != nil && !errors.Is(err, ErrNotFound) {
			c.counters.loadEr.Add(1)
		}
		c.metrics.recordLoad(ctx, time.Since(start))
	}()
	return call(ctx)
}

// Close stops the cache's background work and releases L1. It does not close
// Config.Redis, which belongs to the caller. It is safe to call more than once.
func (c *Cache[V]) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.bgMu.Lock()
		c.closed.Store(true)
		c.bgMu.Unlock()
		if c.l2 != nil {
			err = c.closeOutbox() // before the bus closes: a replay publishes
		}
		c.closeAll() // loads and polls in flight end with their contexts
		if c.bus != nil {
			_ = c.bus.Close() // before L1: its flushes must not meet a closed L1
		}
		c.bg.Wait() // flights and refreshes, which install into L1
		if c.hot != nil {
			c.hot.Close()
		}
		c.l1.Close()
		c.clock.Close()
		err = errors.Join(err, c.metrics.reg.Unregister())
	})
	return err
}

// Stats returns a snapshot of the cache's counters.
func (c *Cache[V]) Stats() Stats {
	s := Stats{
		L1Hits: c.counters.l1Hits.load(), L1Misses: c.counters.l1Misses.Load(),
		L2Hits: c.counters.l2Hits.Load(), L2Misses: c.counters.l2Misses.Load(),
		L2Errors: c.counters.l2Errors.Load(), DecodeErrors: c.counters.decodeErrs.Load(),
		Loads: c.counters.loads.Load(), SharedLoads: c.counters.shared.Load(), LoadErrors: c.counters.loadEr.Load(),
		LeaseWaits: c.counters.leaseWaits.Load(),
		Refreshes:  c.counters.refreshes.Load(), StaleServed: c.counters.staleServed.Load(), StaleOnError: c.counters.staleOnError.Load(),
		FencedFills: c.counters.fenced.Load(), LeasesLost: c.counters.leaseLost.Load(),
		StaleSkips: c.counters.staleSkips.Load(), Flushes: c.counters.flushes.Load(),
		FailedWrites: c.counters.failedWrites.Load(), WriteRetries: c.counters.writeRetries.Load(),
		OutboxHeld: c.outbox.Held().Load(), OutboxDropped: c.outbox.Dropped(), OutboxReplays: c.outbox.Replays(),
		Breaker: "none", BreakerOpens: c.counters.breakerOpens.Load(),
	}
	l := c.l1.Stats()
	s.L1Items, s.L1Bytes, s.L1WindowBytes = l.Items, l.Bytes, l.WindowBytes
	if c.bus != nil {
		s.Bus = c.bus.Stats()
	}
	if c.l2 != nil {
		s.Breaker = breakerName(gobreaker.State(c.counters.breaker.Load()))
	}
	return s
}

// result is what a read of e returns.
func result[V any](e *entry[V]) (V, error) {
	if e.Value.negative {
		var zero V
		return zero, ErrNotFound
	}
	return e.Value.v, nil
}

func (c *Cache[V]) checkKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	case len(key) > c.cfg.MaxKeyBytes:
		return fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidKey, len(key), c.cfg.MaxKeyBytes)
	}
	return nil
}

func (c *Cache[V]) isClosed() bool { return c.closed.Load() }

func (c *Cache[V]) l2Key(key string) string { return l2.Key(c.cfg.Namespace, key) }

func (c *Cache[V]) l2Keys(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = c.l2Key(k)
	}
	return out
}

// l1TTL bounds an L1 copy by L1TTL and by its L2 entry's life left (0: none).
func (c *Cache[V]) l1TTL(l2Remaining time.Duration) time.Duration {
	ttl := c.jitter(c.cfg.L1TTL)
	if l2Remaining > 0 {
		ttl = min(ttl, l2Remaining)
	}
	return ttl
}

// jitter spreads d over [d·(1−Jitter), d]: shortening only keeps TTL bounds.
func (c *Cache[V]) jitter(d time.Duration) time.Duration {
	if c.cfg.Jitter <= 0 || d <= 0 {
		return d
	}
	return d - time.Duration(rand.Float64()*c.cfg.Jitter*float64(d))
}

func (c *Cache[V]) strict(err error) error {
	if c.cfg.Strict {
		return err
	}
	return nil
}

func (c *Cache[V]) l2Failed(ctx context.Context, op, key string, err error) {
	c.counters.l2Errors.Add(1)
	if errors.Is(err, ErrL2Unavailable) {
		return // logged by the breaker's state change
	}
	c.logL2.Do(func() {
		c.cfg.Logger.WarnContext(ctx, "tiercache: L2 call failed; serving from L1 and the loader",
			"namespace", c.cfg.Namespace, "op", op, "key", key, "err", err)
	})
}

func (c *Cache[V]) decodeFailed(ctx context.Context, key string, err error) {
	c.counters.decodeErrs.Add(1)
	c.cfg.Logger.WarnContext(ctx, "tiercache: undecodable L2 value treated as a miss",
		"namespace", c.cfg.Namespace, "key", key, "err", err)
}

func endSpan(span trace.Span, err *error) {
	if *err != nil {
		span.RecordError(*err)
		span.SetStatus(codes.Error, (*err).Error())
	}
	span.End()
}
