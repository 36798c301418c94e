package tiered

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	gocacheredis "github.com/eko/gocache/store/redis/v4"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"github.com/tiercache/tiercache/internal/clock"
	"github.com/tiercache/tiercache/internal/l1"
	"github.com/tiercache/tiercache/invalidation"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

// ErrNotFound reports that a key is in neither tier, or that a loader said
// so (a loader returns it, or an error wrapping it, to have the absence
// cached for Config.NegativeTTL).
var ErrNotFound = errors.New("tiered: not found")

// ErrClosed is returned by every method called after Close.
var ErrClosed = errors.New("tiered: cache closed")

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
	l2       *l2 // nil: L1 only
	fence    *fence
	outbox   *outbox
	bus      *invalidation.Bus // nil: no Redis, or DisableInvalidation
	flights  flights[V]
	counters counters
	metrics  *instruments
	tracer   trace.Tracer
	// logL2 rate-limits warnings about L2 failures: when Redis is down every
	// call fails, and one line a second says as much as a thousand.
	logL2 rate.Sometimes

	closeOnce sync.Once
	closed    atomic.Bool

	clock clock.Coarse
	beta  float64
	hot   *hotKeys // nil: Config.HotKeys off // XFetch's β; 0: no early refresh
	// bg counts the goroutines that fill flights and refresh in the
	// background, which Close cancels (closing) and waits for; bgMu keeps
	// one from starting once Close has begun.
	bg       sync.WaitGroup
	bgMu     sync.Mutex
	closing  context.Context
	closeAll context.CancelFunc

	// noFence switches off both fences (L1 tickets, L2 leases), so that
	// tests can show the races they close. Set only by tests.
	noFence bool
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
	c := &Cache[V]{cfg: cfg, fence: newFence(), outbox: newOutbox(), logL2: rate.Sometimes{Interval: time.Second}, beta: max(cfg.EarlyRefresh, 0)}
	c.closing, c.closeAll = context.WithCancel(context.Background())
	if c.l1, err = local(c); err != nil {
		return nil, fmt.Errorf("tiered: L1: %w", err)
	}
	st := cfg.Store
	if st == nil && cfg.Redis != nil {
		st = gocacheredis.NewRedis(cfg.Redis)
		warnIfUnbounded(cfg.Logger, cfg.Redis)
		if cc, ok := cfg.Redis.(*redis.ClusterClient); ok {
			watchTopology(cc)
		}
	}
	c.counters.breaker.Store(int32(gobreaker.StateClosed))
	if st != nil {
		failures := uint32(cfg.BreakerFailures)
		// The failures must also span two L2 timeouts: one stall of the
		// machine or the network fails every call in flight at once, and
		// must not cut L2 off for a whole cooldown.
		span := 2 * cfg.L2Timeout
		c.l2 = &l2{
			store:   st,
			rdb:     cfg.Redis,
			timeout: cfg.L2Timeout,
			held:    &c.outbox.held,
			breaker: gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
				Name:    cfg.Namespace,
				Timeout: cfg.BreakerCooldown,
				ReadyToTrip: func(n gobreaker.Counts) bool {
					return n.ConsecutiveFailures >= failures && c.l2.failingFor() >= span
				},
				IsExcluded: func(err error) bool { return err == errExcluded },
				OnStateChange: func(_ string, from, to gobreaker.State) {
					c.counters.breaker.Store(int32(to))
					if to == gobreaker.StateOpen {
						c.counters.breakerOpens.Add(1)
					}
					cfg.Logger.Warn("tiercache: L2 circuit breaker changed state",
						"namespace", cfg.Namespace, "from", breakerName(from), "to", breakerName(to))
				},
			}),
		}
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
		c.bus, err = invalidation.New(cfg.Redis, invalidation.Config{
			Channel:        "tiercache:inv:" + cfg.Namespace,
			Evict:          c.invalidateLocalKeys,
			EvictTags:      c.invalidateLocalTags,
			Flush:          c.flush,
			StalenessBound: cfg.StalenessBound,
			Window:         cfg.InvalidationWindow,
			// A lost publish flushes every other process, so it gets more
			// time than a read: up to a heartbeat period.
			PublishTimeout:  max(cfg.L2Timeout, cfg.StalenessBound/4),
			MaxKeyBytes:     cfg.MaxKeyBytes,
			MaxMessageBytes: max(64<<10, 2*cfg.MaxKeyBytes+1024),
			Logger:          cfg.Logger,
			MeterProvider:   mp,
		})
		if err != nil {
			_ = c.metrics.reg.Unregister()
			c.l1.Close()
			c.clock.Close()
			return nil, fmt.Errorf("tiered: invalidation bus: %w", err)
		}
		// Wait briefly for the bus, so that the first fills are not
		// flushed when it turns fresh. If Redis is down, go on: L1 copies
		// are then served only while younger than the bound.
		ctx, cancel := context.WithTimeout(context.Background(), min(cfg.StalenessBound/2, time.Second))
		c.bus.WaitFresh(ctx)
		cancel()
	}
	if cfg.HotKeys > 0 && cfg.Redis != nil {
		c.hot = newHotKeys(cfg.HotKeys, cfg.HotKeysInterval)
		go c.hot.run(c.publishHot)
	}
	return c, nil
}

const instrumentationName = "github.com/tiercache/tiercache/tiered"

// Get returns the value cached for key: from L1, else from L2 (copying it
// into L1). A key in neither tier, or cached as absent, gives an error for
// which errors.Is(err, ErrNotFound) holds.
func (c *Cache[V]) Get(ctx context.Context, key string) (V, error) {
	return c.get(ctx, "tiered.Get", key, nil, nil)
}

// GetOrLoad returns the value for key from L1, else from L2, else from load,
// whose result fills L2 and then L1. Concurrent callers for one key in this
// process share one L2 read and one load. A load that fails with ErrNotFound
// is cached as absent for Config.NegativeTTL; other load errors are returned
// and not cached.
//
// L2 failures do not fail GetOrLoad (unless Config.Strict): it goes on to
// load, and the failure is counted and logged.
//
// Options (WithTTL, WithTags) apply to a loaded value.
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
	// The L1 hit path: no allocation, and no span unless the caller's span
	// is recording (a span costs ~20× the hit itself; metrics count hits).
	if c.hot != nil {
		c.hot.sample(key)
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

// servable reports whether an L1 copy may be served: always while the bus
// is fresh (or there is no bus); otherwise only a copy younger than the
// staleness bound, which no write older than the bound can have outdated.
// Either way, none of its tags may have been invalidated since its fill.
func (c *Cache[V]) servable(e *entry[V]) bool {
	return (c.bus == nil || c.bus.Fresh() || c.young(e)) && (e.Value.tags == nil || c.fence.tagsValid(*e.Value.tags))
}

func (c *Cache[V]) young(e *entry[V]) bool {
	if time.Now().UnixNano()-e.Value.filled <= int64(c.cfg.StalenessBound) {
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

// detach returns a context for work that outlives the caller who started
// it (a flight, a refresh): it keeps ctx's values but not its deadline or
// cancellation, and is cancelled by Close.
func (c *Cache[V]) detach(ctx context.Context) (context.Context, context.CancelFunc) {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(c.closing, cancel)
	return fctx, func() { stop(); cancel() }
}

// safely runs f, turning a panic (a codec's, say; loaders' panics are
// caught closer) into an error for the flight's callers: on a flight's
// goroutine a panic would take the process down.
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
	// An L1 copy due for a look at the clock: fresh but drawing for an
	// early refresh, stale within StaleTTL (served at once, refreshed in
	// the background), or kept only for stale-if-error.
	var fallback *entry[V]
	if e, ok := c.l1.Lookup(key); ok && c.servable(e) {
		switch c.state(e, c.clock.Now(), o, load != nil) {
		case entryRefreshEarly:
			c.refreshAsync(ctx, key, load, o, e.Value.fresh)
			fallthrough
		case entryFresh:
			c.counters.l1Hits.add(key)
			return result(e)
		case entryStale:
			if load != nil {
				c.refreshAsync(ctx, key, load, o, e.Value.fresh)
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

	// Gets and loads fly separately: a Get must not make a GetOrLoad of the
	// same key give up on loading because the Get found nothing.
	fkey := flightKey{flightGet, key}
	if load != nil {
		fkey.kind = flightLoad
	}
	fl, leader := c.flights.join(fkey)
	if leader {
		// The flight serves every waiting caller, so it runs on its own
		// goroutine and must not die with the first caller's context; it
		// keeps the context's values (trace, baggage), and ends with Close.
		fctx, cancel := c.detach(ctx)
		if !c.spawn(func() {
			defer cancel()
			c.flights.finish(fkey, fl, c.safely(key, func() flightResult[V] { return c.fill(fctx, key, load, o) }))
		}) {
			cancel()
			c.flights.finish(fkey, fl, flightResult[V]{err: ErrClosed})
		}
	}
	select {
	case <-fl.done:
	case <-ctx.Done():
		span.SetStatus(codes.Error, "caller gave up")
		return zero, ctx.Err()
	}
	fr, shared := fl.res, fl.callers > 1
	if shared {
		c.counters.shared.Add(1)
	}
	if fr.e == nil && fr.err != nil && load != nil && fallback != nil && withinMaxStale(fallback, c.clock.Now()) {
		// Stale-if-error: the refresh failed (L2 or the loader), and the
		// L1 copy is within MaxStale.
		c.counters.staleOnError.Add(1)
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

// fill runs once per key among concurrent callers: L1 again, L2, then the
// loader. Re-checking L1 matters: consider a caller that misses L1, is
// descheduled while another caller's flight fills L1 and returns, and then
// starts a flight of its own; without the re-check it would read L2 again.
//
// The fence ticket is taken before L2 is read: an invalidation of key that
// arrives while the read or the load is in flight keeps its result out of
// L1 (the callers still get it).
func (c *Cache[V]) fill(ctx context.Context, key string, load LoadFunc[V], o callOptions) flightResult[V] {
	t := c.fence.ticket(key, o.tags)
	started := time.Now().UnixNano()
	if e, ok := c.l1.Lookup(key); ok && c.servable(e) && c.state(e, c.clock.Now(), o, false) == entryFresh {
		return flightResult[V]{e: e, tier: tierL1}
	}
	var l2err error
	var junk []byte
	if c.l2 != nil {
		b, err := c.l2.get(ctx, c.l2Key(key))
		switch {
		case errors.Is(err, errL2WrongType):
			// Garbage of another type: a miss, which the lease replaces.
			c.counters.l2Misses.Add(1)
		case err == nil:
			e, ttl, state := c.decodeL2(ctx, key, b)
			if state == l2Junk {
				junk = b
			}
			if state != l2Value {
				c.counters.l2Misses.Add(1)
				break
			}
			c.counters.l2Hits.Add(1)
			e.Value.filled = started
			st := c.state(e, c.clock.Now(), o, load != nil)
			switch {
			case st == entryFresh || st == entryRefreshEarly:
				c.install(key, e, c.l1TTL(ttl), t, false)
				if st == entryRefreshEarly {
					c.refreshAsync(ctx, key, load, o, e.Value.fresh)
				}
				return flightResult[V]{e: e, tier: tierL2}
			case st == entryStale:
				c.install(key, e, c.l1TTL(ttl), t, false)
				if load != nil {
					c.refreshAsync(ctx, key, load, o, e.Value.fresh)
				}
				return flightResult[V]{e: e, tier: tierStale}
			case load == nil:
				// Past the stale window, a Get finds nothing.
				return flightResult[V]{tier: tierNone}
			default:
				// Past the stale window: reload now, and serve this value
				// if that fails, within MaxStale.
				if c.l2.rdb == nil || c.noFence {
					b = nil // no refresh lease or compare-and-set without go-redis: write plainly
				}
				return c.reload(ctx, key, load, o, t, started, b, e)
			}
		case errors.Is(err, errL2Miss):
			c.counters.l2Misses.Add(1)
		default:
			c.l2Failed(ctx, "get", key, err)
			c.counters.l2Misses.Add(1)
			l2err = err
		}
	}
	if load == nil {
		return flightResult[V]{tier: tierNone, err: c.strict(l2err)}
	}
	// Take the L2 lease before loading, so that a Set or Delete during the
	// load can void it. An L2 that just failed is not asked.
	var lease []byte
	leased := false
	if l2err == nil && c.l2 != nil && c.l2.rdb != nil && !c.noFence {
		if len(o.tags) > 0 {
			// The key joins its tags before its lease is taken, so that an
			// InvalidateTags during the load finds it and deletes the lease.
			l2err = c.l2.call(ctx, func(ctx context.Context) error {
				return c.l2.addTags(ctx, c.cfg.Namespace, []string{key}, o.tags, o.ttl+c.cfg.LeaseTTL)
			})
		}
		if l2err == nil {
			var e *entry[V]
			var ttl time.Duration
			lease, leased, e, ttl, l2err = c.awaitLease(ctx, key, junk)
			if e != nil {
				// Another process loaded it while we waited.
				c.counters.l2Hits.Add(1)
				e.Value.filled = started
				c.install(key, e, c.l1TTL(ttl), t, false)
				return flightResult[V]{e: e, tier: tierL2}
			}
		}
		if l2err != nil {
			c.l2Failed(ctx, "lease", key, l2err)
		}
	}
	// Every way out below that does not fill L2 gives the lease back.
	unlease := func() {
		if leased {
			if err := c.l2.releaseLease(ctx, c.l2Key(key), lease); err != nil {
				c.l2Failed(ctx, "release", key, err)
			}
		}
	}
	e, err := c.runLoad(ctx, key, load)
	if err != nil {
		unlease()
		return flightResult[V]{tier: tierLoader, err: err}
	}
	e.Value.filled = started
	ttl := c.cacheTTL(e, o)
	if ttl < 0 {
		// Negative caching is off: answer, but remember nothing.
		unlease()
		return flightResult[V]{e: e, tier: tierLoader, err: c.strict(l2err)}
	}
	// The value fills L2 first, then L1: a reader in another process must be
	// able to find in L2 anything this process already serves from L1.
	b, ttl, err := c.encode(key, e, c.jitter(ttl), o)
	if err != nil {
		// The loaded value is good; it just cannot be cached.
		c.cfg.Logger.WarnContext(ctx, "tiercache: loaded value not cached", "namespace", c.cfg.Namespace, "key", key, "err", err)
		unlease()
		return flightResult[V]{e: e, tier: tierLoader, err: c.strict(l2err)}
	}
	switch {
	case l2err != nil:
		// An L2 that just failed is not asked to write: when Redis is down
		// that would double what every miss pays until the breaker opens.
	case leased:
		err := c.l2.fillLeased(ctx, c.l2Key(key), lease, b, ttl)
		if errors.Is(err, errLeaseLost) {
			// A write or delete replaced the lease while we loaded: our
			// value may predate it, so it goes nowhere but to our callers.
			c.counters.leaseLost.Add(1)
			return flightResult[V]{e: e, tier: tierLoader}
		}
		if err != nil {
			c.l2Failed(ctx, "fill", key, err)
			l2err = err
		} else if len(o.tags) > 0 {
			l2err = c.tagWritten(ctx, key, o.tags, ttl)
		}
	case c.l2 != nil && (c.l2.rdb == nil || c.noFence):
		// No lease to be had (a gocache Store alone): write as before.
		l2err = c.writeL2(ctx, key, b, ttl)
	default:
		// Another process holds the lease and will fill L2 itself.
	}
	// After a load, unlike after an L2 read, L1 waits for the entry to
	// land: a caller arriving just after this flight must not load again,
	// and the wait is small beside a load.
	c.install(key, e, c.l1TTL(ttl), t, true)
	return flightResult[V]{e: e, tier: tierLoader, err: c.strict(l2err)}
}

// l1Requests reports the L1 hits and misses so far, for L1's window.
func (c *Cache[V]) l1Requests() (hits, misses int64) {
	return c.counters.l1Hits.load(), c.counters.l1Misses.Load()
}

// install puts e into L1 unless an invalidation of key came after ticket t.
// The ticket is checked again after the store: an invalidation between the
// check and the store bumped the fence first, so one of the two checks sees
// it, and the second removes what the first let in.
func (c *Cache[V]) install(key string, e *entry[V], ttl time.Duration, t ticket, wait bool) {
	if !c.noFence && !c.fence.valid(t) {
		c.counters.fenced.Add(1)
		return
	}
	if len(t.tags) > 0 {
		e.Value.tags = &t.tags
	}
	if wait {
		c.l1.Set(key, e, ttl)
	} else {
		c.l1.Fill(key, e, ttl)
	}
	if !c.noFence && !c.fence.valid(t) {
		c.l1.Delete(key)
		c.counters.fenced.Add(1)
	}
}

// tagWritten adds a written key to its tags. If that fails, the value is
// removed from L2 again: a tagged value that its tags do not list would
// escape InvalidateTags.
func (c *Cache[V]) tagWritten(ctx context.Context, key string, tags []string, ttl time.Duration) error {
	err := c.l2.call(ctx, func(ctx context.Context) error { return c.l2.addTags(ctx, c.cfg.Namespace, []string{key}, tags, ttl) })
	if err == nil {
		return nil
	}
	c.l2Failed(ctx, "tag", key, err)
	wctx, cancel := c.writeContext(ctx)
	defer cancel()
	if derr := c.change(wctx, func(ctx context.Context) error { return c.l2.must(ctx, c.delOp(key)) }, []string{key}, nil, nil, nil); derr != nil {
		c.l2Failed(ctx, "delete", key, derr)
	}
	return fmt.Errorf("tiered: tag %q: %w", key, err)
}

// runLoad calls load for key (see guardLoad).
func (c *Cache[V]) runLoad(ctx context.Context, key string, load LoadFunc[V]) (*entry[V], error) {
	var v V
	start := time.Now()
	err := c.guardLoad(ctx, func(ctx context.Context) (err error) {
		v, err = load(ctx, key)
		return err
	})
	switch {
	case errors.Is(err, ErrNotFound):
		return &entry[V]{Value: item[V]{negative: true}}, nil
	case err != nil:
		return nil, fmt.Errorf("tiered: load %q: %w", key, err)
	}
	return &entry[V]{Value: item[V]{v: v, delta: int64(time.Since(start))}}, nil
}

// guardLoad runs a loader call: bounded by Config.LoadTimeout, counted and
// timed, with a panic turned into an error, since the call runs on a
// flight's goroutine, where a panic would take the whole process down.
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

// cacheTTL is how long e, just loaded, stays fresh: o's TTL, or
// NegativeTTL for an absence; negative means not cached.
func (c *Cache[V]) cacheTTL(e *entry[V], o callOptions) time.Duration {
	if e.Value.negative {
		return c.cfg.NegativeTTL
	}
	return o.ttl
}

// l2State says what the bytes under a key in L2 are.
type l2State int

const (
	l2Value l2State = iota // a live value (or a live negative entry)
	l2Lease                // another process's lease: it is loading
	l2Junk                 // corrupt, foreign or expired: a miss that a load may replace
)

// decodeL2 decodes the bytes b read from L2 for key.
func (c *Cache[V]) decodeL2(ctx context.Context, key string, b []byte) (*entry[V], time.Duration, l2State) {
	env, err := decodeEnvelope(b, c.cfg.Codec.ID(), c.cfg.MaxValueBytes)
	if err != nil {
		c.decodeFailed(ctx, key, err)
		return nil, 0, l2Junk
	}
	now := time.Unix(0, c.clock.Now())
	ttl, live := env.remaining(now)
	switch {
	case !live:
		return nil, 0, l2Junk
	case env.lease && (env.expiry == 0 || ttl > c.cfg.LeaseTTL+leaseSkew):
		// A lease that never ends, or ends later than any lease of ours
		// can: garbage (or a clock far off), which a miss must not wait
		// on. It is replaced like junk.
		c.decodeFailed(ctx, key, errBadLease)
		return nil, 0, l2Junk
	case env.lease:
		return nil, 0, l2Lease
	}
	e := &entry[V]{Value: item[V]{negative: env.negative}, Cost: l1.EntryCost(key, len(b))}
	if env.fresh != 0 && !env.negative {
		e.Value.fresh, e.Value.hard, e.Value.delta = env.fresh*1e6, env.expiry*1e6, env.delta*1e3
		if env.expiry == 0 {
			e.Value.hard = math.MaxInt64
		}
		c.schedule(e)
	}
	if !env.negative {
		if err := c.cfg.Codec.Unmarshal(env.payload, &e.Value.v); err != nil {
			c.decodeFailed(ctx, key, err)
			return nil, 0, l2Junk
		}
	}
	return e, ttl, l2Value
}

// awaitLease takes key's lease or, while another process holds it, waits
// for that process to fill the key, polling with backoff: one load for the
// whole cluster. It returns the lease if it got one, or the entry the
// holder wrote. If the holder dies, its lease expires and this process
// takes it over. After LeaseTTL of waiting it gives up (held false, e nil),
// and the caller loads without writing L2.
func (c *Cache[V]) awaitLease(ctx context.Context, key string, junk []byte) (lease []byte, held bool, e *entry[V], ttl time.Duration, err error) {
	wait := c.leaseWait()
	for waited := false; ; {
		var cur []byte
		lease, held, cur, err = c.l2.acquireLease(ctx, c.l2Key(key), junk, c.cfg.LeaseTTL)
		if err != nil || held {
			return lease, held, nil, 0, err
		}
		var state l2State
		if e, ttl, state = c.decodeL2(ctx, key, cur); state == l2Value {
			return nil, false, e, ttl, nil
		}
		if state == l2Junk {
			junk = cur
		} else if !waited {
			waited = true
			c.counters.leaseWaits.Add(1)
		}
		if !wait.next(ctx) {
			return nil, false, nil, 0, nil
		}
	}
}

// maxLeasePoll caps the wait between two polls of a key whose lease another
// process holds: it is how late a waiter may see the holder's fill.
const maxLeasePoll = 16 * time.Millisecond

// pollWait paces the polls of a key that another process is loading or
// refreshing: from 1 ms, doubling up to maxLeasePoll, for at most LeaseTTL
// (plus an L2 timeout), after which the holder is taken for dead.
type pollWait struct {
	deadline time.Time
	backoff  time.Duration
}

func (c *Cache[V]) leaseWait() pollWait {
	return pollWait{deadline: time.Now().Add(c.cfg.LeaseTTL + c.cfg.L2Timeout), backoff: time.Millisecond}
}

// next sleeps until the next poll and reports whether there is one: false
// once the deadline would pass, or ctx is done.
func (w *pollWait) next(ctx context.Context) bool {
	if time.Now().Add(w.backoff).After(w.deadline) || !sleep(ctx, w.backoff) {
		return false
	}
	w.backoff = min(2*w.backoff, maxLeasePoll)
	return true
}

// writeL2 stores the filled envelope b for ttl; without an L2 it does
// nothing.
func (c *Cache[V]) writeL2(ctx context.Context, key string, b []byte, ttl time.Duration) error {
	if c.l2 == nil {
		return nil
	}
	if err := c.l2.set(ctx, c.l2Key(key), b, ttl); err != nil {
		c.l2Failed(ctx, "set", key, err)
		return fmt.Errorf("tiered: L2 set %q: %w", key, err)
	}
	return nil
}

// encode returns the envelope for e, fresh for ttl, and how long L2 should
// keep it: ttl plus the longer of the stale windows in o (absences get no
// stale window). It sets e's cost (its L1 size, which counts even without
// an L2) and its freshness.
func (c *Cache[V]) encode(key string, e *entry[V], ttl time.Duration, o callOptions) ([]byte, time.Duration, error) {
	var payload []byte
	if !e.Value.negative {
		var err error
		if payload, err = c.marshal(key, e.Value.v); err != nil {
			return nil, 0, err
		}
	}
	now := time.Unix(0, c.clock.Now())
	if e.Value.negative {
		e.Cost = l1.EntryCost(key, headerSize)
		return appendEnvelope(make([]byte, 0, headerSize), 0, flagNegative, now.Add(ttl), nil), ttl, nil
	}
	keep := ttl + max(o.staleTTL, o.maxStale)
	fresh, hard := now.Add(ttl), now.Add(keep)
	e.Value.fresh, e.Value.hard = fresh.UnixNano(), hard.UnixNano()
	c.schedule(e)
	e.Cost = l1.EntryCost(key, headerSize+freshExt+len(payload))
	b := make([]byte, 0, headerSize+freshExt+len(payload))
	return appendFreshEnvelope(b, c.cfg.Codec.ID(), 0, fresh, hard, time.Duration(e.Value.delta), payload), keep, nil
}

// marshal encodes v for L2, refusing a payload over MaxValueBytes.
func (c *Cache[V]) marshal(key string, v V) ([]byte, error) {
	payload, err := c.cfg.Codec.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("tiered: encode %q: %w", key, err)
	}
	if len(payload) > c.cfg.MaxValueBytes {
		return nil, fmt.Errorf("%w: %q encodes to %d bytes, limit %d", ErrValueTooLarge, key, len(payload), c.cfg.MaxValueBytes)
	}
	return payload, nil
}

// Set stores v under key in L2 and then in L1, for Config.TTL (or
// WithTTL), and invalidates the key in every other process's L1 before it
// returns (see docs/consistency.md). A load of key in flight anywhere when
// Set writes loses its lease and does not overwrite v.
//
// Set finishes its L2 write and its invalidation even if ctx is done,
// retrying them for up to Config.WriteTimeout. If it cannot, it still
// stores v in this process's L1, keeps the invalidation in its outbox to
// make when Redis answers, and returns an error for which
// errors.Is(err, ErrL2Unavailable) holds: other processes may serve the old
// value until then (see docs/consistency.md).
func (c *Cache[V]) Set(ctx context.Context, key string, v V, opts ...Option) (err error) {
	if err := c.checkKey(key); err != nil {
		return err
	}
	o, err := c.options(opts)
	if err != nil {
		return err
	}
	if c.isClosed() {
		return ErrClosed
	}
	ctx, span := c.tracer.Start(ctx, "tiered.Set", trace.WithAttributes(attribute.String("tiercache.namespace", c.cfg.Namespace)))
	defer endSpan(span, &err)
	wctx, cancel := c.writeContext(ctx)
	defer cancel()

	t := c.fence.ticket(key, o.tags) // for its tags: an InvalidateTags during Set ends the L1 copy
	e := &entry[V]{Value: item[V]{v: v, filled: time.Now().UnixNano()}}
	b, ttl, err := c.encode(key, e, c.jitter(o.ttl), o)
	if err != nil {
		return err // bad input: nothing was written anywhere
	}
	// The fence moves after the L2 write: a fill that read L2 before it
	// holds an older ticket and will not install over v. On a failure,
	// change installs v before the outbox holds the key.
	install := func() {
		c.fence.invalidate(key)
		if len(t.tags) > 0 {
			e.Value.tags = &t.tags
		}
		c.l1.Set(key, e, c.l1TTL(ttl))
	}
	var l2err error
	if c.l2 != nil {
		l2key := c.l2Key(key)
		l2err = c.change(wctx, func(ctx context.Context) error {
			if err := c.l2.must(ctx, func(ctx context.Context) error { return c.l2.put(ctx, l2key, b, ttl) }); err != nil {
				return err
			}
			if len(o.tags) > 0 && c.l2.rdb != nil {
				// After the value: see InvalidateTags.
				return c.l2.must(ctx, func(ctx context.Context) error { return c.l2.addTags(ctx, c.cfg.Namespace, []string{key}, o.tags, ttl) })
			}
			return nil
		}, []string{key}, nil, nil, install)
		if l2err != nil {
			c.l2Failed(ctx, "set", key, l2err)
			l2err = fmt.Errorf("tiered: set %q: %w", key, l2err)
		}
	}
	if l2err == nil {
		install()
	}
	return errors.Join(l2err, c.announce(wctx, l2err == nil, []string{key}, nil))
}

// Delete removes keys from L2 and then from L1, and invalidates them in
// every other process's L1 before it returns. All keys are checked before
// anything is removed. L2 failures are handled as in Set: the keys leave
// this process's L1 whatever happens, and what Redis did not get is kept in
// the outbox.
func (c *Cache[V]) Delete(ctx context.Context, keys ...string) (err error) {
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return err
		}
	}
	if c.isClosed() {
		return ErrClosed
	}
	ctx, span := c.tracer.Start(ctx, "tiered.Delete", trace.WithAttributes(
		attribute.String("tiercache.namespace", c.cfg.Namespace), attribute.Int("tiercache.keys", len(keys))))
	defer endSpan(span, &err)
	wctx, cancel := c.writeContext(ctx)
	defer cancel()

	var l2err error
	if c.l2 != nil && len(keys) > 0 {
		// The DEL also removes a lease, so a load in flight cannot write
		// its older value back.
		l2keys := c.l2Keys(keys)
		l2err = c.change(wctx, func(ctx context.Context) error {
			return c.l2.must(ctx, func(ctx context.Context) error { return c.l2.delMany(ctx, l2keys) })
		}, keys, nil, nil, nil)
		if l2err != nil {
			c.l2Failed(ctx, "delete", keys[0], l2err)
			l2err = fmt.Errorf("tiered: delete %d keys: %w", len(keys), l2err)
		}
	}
	// L1 goes last, and the fence with it: a fill that read the L2 entry
	// before the DEL cannot install it afterwards.
	c.invalidateLocal(keys...)
	return errors.Join(l2err, c.announce(wctx, l2err == nil, keys, nil))
}

// delOp is the L2 deletion of key, for must.
func (c *Cache[V]) delOp(key string) func(ctx context.Context) error {
	return func(ctx context.Context) error { return c.l2.delMany(ctx, []string{c.l2Key(key)}) }
}

// invalidateLocal removes keys from this process's L1 and fences the fills
// in flight for them.
func (c *Cache[V]) invalidateLocal(keys ...string) {
	for _, k := range keys {
		c.fence.invalidate(k)
		c.l1.Delete(k)
	}
}

// invalidateLocalKeys is invalidateLocal for the bus, which hands over a
// slice.
func (c *Cache[V]) invalidateLocalKeys(keys []string) { c.invalidateLocal(keys...) }

// invalidateLocalTags ends this process's L1 copies that carry any of tags
// (see fence) and fences the fills in flight that are to carry them.
func (c *Cache[V]) invalidateLocalTags(tags []string) {
	for _, t := range tags {
		c.fence.invalidateTag(t)
	}
}

// flush empties this process's L1 and fences every fill in flight. The
// bus calls it when it may have missed invalidations, and logs and counts
// the reason itself.
func (c *Cache[V]) flush(string) {
	c.fence.invalidateAll()
	c.l1.Clear()
	c.counters.flushes.Add(1)
}

// announce sends keys and tags to the other processes' L1s, if there is a
// bus, retried within ctx when again is set (the write's L2 change went
// through, so Redis answers). An error wraps ErrL2Unavailable: the others
// then notice the missing message at this process's next heartbeat that
// reaches Redis, and flush.
func (c *Cache[V]) announce(ctx context.Context, again bool, keys, tags []string) error {
	if c.bus == nil || len(keys)+len(tags) == 0 {
		return nil
	}
	send := func(ctx context.Context) error {
		if err := c.bus.Publish(ctx, keys...); err != nil {
			return err
		}
		return c.bus.PublishTags(ctx, tags...)
	}
	var err error
	if again {
		err = c.retry(ctx, send)
	} else {
		err = send(ctx)
	}
	if err != nil {
		return fmt.Errorf("tiered: invalidation: %w: %w", ErrL2Unavailable, err)
	}
	return nil
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
			_ = c.bus.Close() // first: its flushes must not meet a closed L1
		}
		c.bg.Wait() // flights and refreshes, which install into L1
		if c.hot != nil {
			c.hot.close()
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
		OutboxHeld: c.outbox.held.Load(), OutboxDropped: c.outbox.dropped.Load(), OutboxReplays: c.outbox.replays.Load(),
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

func (c *Cache[V]) l2Key(key string) string { return c.cfg.Namespace + ":" + key }

func (c *Cache[V]) l2Keys(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = c.l2Key(k)
	}
	return out
}

// l1TTL bounds an L1 copy by the L1 TTL and by what is left of its L2 entry
// (0: the L2 entry does not expire).
func (c *Cache[V]) l1TTL(l2Remaining time.Duration) time.Duration {
	ttl := c.jitter(c.cfg.L1TTL)
	if l2Remaining > 0 {
		ttl = min(ttl, l2Remaining)
	}
	return ttl
}

// jitter spreads d uniformly over [d·(1−Jitter), d].
// Only shortening keeps every bound that a TTL promises.
func (c *Cache[V]) jitter(d time.Duration) time.Duration {
	if c.cfg.Jitter <= 0 || d <= 0 {
		return d
	}
	return d - time.Duration(rand.Float64()*c.cfg.Jitter*float64(d))
}

// strict returns err when Config.Strict asks for L2 failures, nil otherwise.
func (c *Cache[V]) strict(err error) error {
	if c.cfg.Strict {
		return err
	}
	return nil
}

func (c *Cache[V]) l2Failed(ctx context.Context, op, key string, err error) {
	c.counters.l2Errors.Add(1)
	if errors.Is(err, ErrL2Unavailable) {
		return // the breaker's state change was logged already
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
