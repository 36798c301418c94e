package tiered

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	gocacheredis "github.com/eko/gocache/store/redis/v4"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"
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
	l1       *l1[V]
	l2       *l2 // nil: L1 only
	flight   singleflight.Group
	counters counters
	metrics  *instruments
	tracer   trace.Tracer
	// logL2 rate-limits warnings about L2 failures: when Redis is down every
	// call fails, and one line a second says as much as a thousand.
	logL2 rate.Sometimes

	closeOnce sync.Once
	closed    atomic.Bool
}

// New returns a Cache configured by cfg. With cfg.Redis (or cfg.Store) set it
// has both tiers; otherwise it is an L1-only cache.
func New[V any](cfg Config) (*Cache[V], error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Cache[V]{cfg: cfg, logL2: rate.Sometimes{Interval: time.Second}}
	if c.l1, err = newL1[V](cfg.L1MaxBytes); err != nil {
		return nil, fmt.Errorf("tiered: L1: %w", err)
	}
	st := cfg.Store
	if st == nil && cfg.Redis != nil {
		st = gocacheredis.NewRedis(cfg.Redis)
		warnIfUnbounded(cfg.Logger, cfg.Redis)
	}
	c.counters.breaker.Store(int32(gobreaker.StateClosed))
	if st != nil {
		failures := uint32(cfg.BreakerFailures)
		c.l2 = &l2{
			store:   st,
			timeout: cfg.L2Timeout,
			breaker: gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
				Name:        cfg.Namespace,
				Timeout:     cfg.BreakerCooldown,
				ReadyToTrip: func(n gobreaker.Counts) bool { return n.ConsecutiveFailures >= failures },
				IsExcluded:  func(err error) bool { return err == errExcluded },
				OnStateChange: func(_ string, from, to gobreaker.State) {
					c.counters.breaker.Store(int32(to))
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
		c.l1.close()
		return nil, fmt.Errorf("tiered: metrics: %w", err)
	}
	return c, nil
}

const instrumentationName = "github.com/tiercache/tiercache/tiered"

// Get returns the value cached for key: from L1, else from L2 (copying it
// into L1). A key in neither tier, or cached as absent, gives an error for
// which errors.Is(err, ErrNotFound) holds.
func (c *Cache[V]) Get(ctx context.Context, key string) (V, error) {
	return c.get(ctx, "tiered.Get", key, nil)
}

// GetOrLoad returns the value for key from L1, else from L2, else from load,
// whose result fills L2 and then L1. Concurrent callers for one key in this
// process share one L2 read and one load. A load that fails with ErrNotFound
// is cached as absent for Config.NegativeTTL; other load errors are returned
// and not cached.
//
// L2 failures do not fail GetOrLoad (unless Config.Strict): it goes on to
// load, and the failure is counted and logged.
func (c *Cache[V]) GetOrLoad(ctx context.Context, key string, load LoadFunc[V]) (V, error) {
	if load == nil {
		var zero V
		return zero, errors.New("tiered: GetOrLoad with a nil loader")
	}
	return c.get(ctx, "tiered.GetOrLoad", key, load)
}

// flightResult is what one flight hands to every caller that shared it.
type flightResult[V any] struct {
	e    *entry[V]
	tier string // "l1", "l2", "loader", or "none" for a Get that found nothing
	err  error  // L2 failures that Strict makes visible; the value may still be good
}

func (c *Cache[V]) get(ctx context.Context, op, key string, load LoadFunc[V]) (V, error) {
	var zero V
	if err := c.checkKey(key); err != nil {
		return zero, err
	}
	if c.isClosed() {
		return zero, ErrClosed
	}
	// The L1 hit path: no allocation, and no span unless the caller's span
	// is recording (a span costs ~20× the hit itself; metrics count hits).
	if e, ok := c.l1.get(key); ok {
		c.counters.l1Hits.add(key)
		if parent := trace.SpanFromContext(ctx); parent.IsRecording() {
			_, span := c.tracer.Start(ctx, op, trace.WithAttributes(attribute.String("tiercache.tier", "l1")))
			span.End()
		}
		return e.result()
	}
	c.counters.l1Misses.Add(1)
	return c.getMiss(ctx, op, key, load)
}

// getMiss is get's miss path, apart so that the hit path stays small.
func (c *Cache[V]) getMiss(ctx context.Context, op, key string, load LoadFunc[V]) (V, error) {
	var zero V
	ctx, span := c.tracer.Start(ctx, op, trace.WithAttributes(attribute.String("tiercache.namespace", c.cfg.Namespace)))
	defer span.End()

	// Gets and loads fly separately: a Get must not make a GetOrLoad of the
	// same key give up on loading because the Get found nothing.
	fkey := "g" + key
	if load != nil {
		fkey = "l" + key
	}
	ch := c.flight.DoChan(fkey, func() (any, error) {
		// The flight serves every waiting caller, so it must not die with
		// the first caller's context; it keeps its values (trace, baggage).
		fctx := context.WithoutCancel(ctx)
		return c.fill(fctx, key, load), nil
	})
	var res singleflight.Result
	select {
	case res = <-ch:
	case <-ctx.Done():
		span.SetStatus(codes.Error, "caller gave up")
		return zero, ctx.Err()
	}
	fr := res.Val.(flightResult[V])
	if res.Shared {
		c.counters.shared.Add(1)
	}
	span.SetAttributes(attribute.String("tiercache.tier", fr.tier), attribute.Bool("tiercache.shared", res.Shared))
	if fr.e == nil {
		if fr.err != nil {
			span.RecordError(fr.err)
			span.SetStatus(codes.Error, fr.err.Error())
			return zero, fr.err
		}
		return zero, ErrNotFound
	}
	v, err := fr.e.result()
	if fr.err != nil && c.cfg.Strict {
		err = errors.Join(err, fr.err)
	}
	return v, err
}

// fill runs once per key among concurrent callers: L1 again, L2, then the
// loader. Re-checking L1 matters: consider a caller that misses L1, is
// descheduled while another caller's flight fills L1 and returns, and then
// starts a flight of its own; without the re-check it would read L2 again.
func (c *Cache[V]) fill(ctx context.Context, key string, load LoadFunc[V]) flightResult[V] {
	if e, ok := c.l1.get(key); ok {
		return flightResult[V]{e: e, tier: "l1"}
	}
	var l2err error
	if c.l2 != nil {
		e, ttl, err := c.readL2(ctx, key)
		switch {
		case err == nil:
			c.counters.l2Hits.Add(1)
			c.l1.fill(key, e, c.l1TTL(ttl))
			return flightResult[V]{e: e, tier: "l2"}
		case errors.Is(err, errL2Miss):
			c.counters.l2Misses.Add(1)
		default:
			c.counters.l2Misses.Add(1)
			l2err = err
		}
	}
	if load == nil {
		return flightResult[V]{tier: "none", err: c.strict(l2err)}
	}
	e, err := c.runLoad(ctx, key, load)
	if err != nil {
		return flightResult[V]{tier: "loader", err: err}
	}
	ttl := c.cfg.TTL
	if e.negative {
		ttl = c.cfg.NegativeTTL
	}
	if ttl < 0 {
		// Negative caching is off: answer, but remember nothing.
		return flightResult[V]{e: e, tier: "loader", err: c.strict(l2err)}
	}
	// The value fills L2 first, then L1: a reader in another process must be
	// able to find in L2 anything this process already serves from L1.
	ttl = c.jitter(ttl)
	b, err := c.encode(key, e, ttl)
	if err != nil {
		// The loaded value is good; it just cannot be cached.
		c.cfg.Logger.WarnContext(ctx, "tiercache: loaded value not cached", "namespace", c.cfg.Namespace, "key", key, "err", err)
		return flightResult[V]{e: e, tier: "loader", err: c.strict(l2err)}
	}
	// An L2 that just failed to read is not asked to write: when Redis is
	// down that would double what every miss pays until the breaker opens.
	if l2err == nil {
		l2err = c.writeL2(ctx, key, b, ttl)
	}
	// After a load, unlike after an L2 read, L1 waits for the entry to
	// land: a caller arriving just after this flight must not load again,
	// and the wait is small beside a load.
	c.l1.set(key, e, c.l1TTL(ttl))
	return flightResult[V]{e: e, tier: "loader", err: c.strict(l2err)}
}

// runLoad calls load, turning a panic into an error: the flight runs on its
// own goroutine, where a panic would take the whole process down.
func (c *Cache[V]) runLoad(ctx context.Context, key string, load LoadFunc[V]) (e *entry[V], err error) {
	if c.cfg.LoadTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.LoadTimeout)
		defer cancel()
	}
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			e, err = nil, fmt.Errorf("tiered: loader for %q panicked: %v", key, r)
		}
		c.counters.loads.Add(1)
		if err != nil {
			c.counters.loadEr.Add(1)
		}
		c.metrics.recordLoad(ctx, time.Since(start))
	}()
	v, err := load(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return &entry[V]{negative: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tiered: load %q: %w", key, err)
	}
	return &entry[V]{v: v}, nil
}

// readL2 returns the entry stored in L2 for key and its remaining TTL.
// Bytes that do not decode are a miss, counted and logged, never a panic.
func (c *Cache[V]) readL2(ctx context.Context, key string) (*entry[V], time.Duration, error) {
	b, err := c.l2.get(ctx, c.l2Key(key))
	if err != nil {
		if !errors.Is(err, errL2Miss) {
			c.l2Failed(ctx, "get", key, err)
		}
		return nil, 0, err
	}
	env, err := decodeEnvelope(b, c.cfg.Codec.ID(), c.cfg.MaxValueBytes)
	if err != nil {
		c.decodeFailed(ctx, key, err)
		return nil, 0, errL2Miss
	}
	ttl, live := env.remaining(time.Now())
	if !live {
		return nil, 0, errL2Miss
	}
	e := &entry[V]{negative: env.negative, cost: int64(len(b) + len(key))}
	if !env.negative {
		if err := c.cfg.Codec.Unmarshal(env.payload, &e.v); err != nil {
			c.decodeFailed(ctx, key, err)
			return nil, 0, errL2Miss
		}
	}
	return e, ttl, nil
}

// writeL2 stores the envelope b for ttl; without an L2 it does nothing.
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

// encode returns the envelope for e and sets e.cost, its L1 size. Without an
// L2 it still encodes, because the encoded size is what L1's budget counts.
func (c *Cache[V]) encode(key string, e *entry[V], ttl time.Duration) ([]byte, error) {
	var payload []byte
	var flags uint8
	if e.negative {
		flags |= flagNegative
	} else {
		var err error
		if payload, err = c.cfg.Codec.Marshal(e.v); err != nil {
			return nil, fmt.Errorf("tiered: encode %q: %w", key, err)
		}
		if len(payload) > c.cfg.MaxValueBytes {
			return nil, fmt.Errorf("%w: %q encodes to %d bytes, limit %d", ErrValueTooLarge, key, len(payload), c.cfg.MaxValueBytes)
		}
	}
	var expiry time.Time
	if ttl > 0 {
		expiry = time.Now().Add(ttl)
	}
	e.cost = int64(headerSize + len(payload) + len(key))
	return appendEnvelope(make([]byte, 0, headerSize+len(payload)), c.cfg.Codec.ID(), flags, expiry, payload), nil
}

// Set stores v under key in L2 and then in L1, for Config.TTL.
//
// A failed L2 write is counted and logged and, in the default fail-open
// mode, Set still stores v in this process's L1 and returns nil; in strict
// mode it removes the key from L1 and returns the error.
func (c *Cache[V]) Set(ctx context.Context, key string, v V) (err error) {
	if err := c.checkKey(key); err != nil {
		return err
	}
	if c.isClosed() {
		return ErrClosed
	}
	ctx, span := c.tracer.Start(ctx, "tiered.Set", trace.WithAttributes(attribute.String("tiercache.namespace", c.cfg.Namespace)))
	defer endSpan(span, &err)

	e := &entry[V]{v: v}
	ttl := c.jitter(c.cfg.TTL)
	b, err := c.encode(key, e, ttl)
	if err != nil {
		return err // bad input: nothing was written anywhere
	}
	if err := c.writeL2(ctx, key, b, ttl); err != nil && c.cfg.Strict {
		c.l1.del(key)
		return err
	}
	c.l1.set(key, e, c.l1TTL(ttl))
	return nil
}

// Delete removes keys from L2 and then from L1. All keys are checked before
// anything is removed. L2 failures are handled as in Set.
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

	var errs []error
	for _, k := range keys {
		// One DEL per key: a multi-key DEL fails on Redis Cluster when the
		// keys hash to different slots.
		if c.l2 != nil {
			if err := c.l2.del(ctx, c.l2Key(k)); err != nil {
				c.l2Failed(ctx, "delete", k, err)
				errs = append(errs, fmt.Errorf("tiered: L2 delete %q: %w", k, err))
			}
		}
		// L1 goes last, so that a reader cannot refill it from the L2 entry
		// we are about to delete (fills racing with deletes are fenced by
		// the invalidation layer).
		c.l1.del(k)
	}
	return c.strict(errors.Join(errs...))
}

// Close stops the cache's background work and releases L1. It does not close
// Config.Redis, which belongs to the caller. It is safe to call more than once.
func (c *Cache[V]) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.l1.close()
		err = c.metrics.reg.Unregister()
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
		L1Items: c.l1.items.Load(), L1Bytes: c.l1.cost.Load(),
		Breaker: "none",
	}
	if c.l2 != nil {
		s.Breaker = breakerName(gobreaker.State(c.counters.breaker.Load()))
	}
	return s
}

func (e *entry[V]) result() (V, error) {
	if e.negative {
		var zero V
		return zero, ErrNotFound
	}
	return e.v, nil
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
