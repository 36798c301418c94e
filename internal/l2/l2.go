package l2

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/eko/gocache/lib/v4/store"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"github.com/tiercache/tiercache/internal/clock"
)

// ErrMiss is the L2 tier's "no such key", translated from gocache's
// store.NotFound (and so from redis.Nil) at this boundary.
var ErrMiss = errors.New("tiered: not in L2")

// ErrWrongType is a key that holds another Redis type than a string:
// garbage that a load replaces (see LeaseOrGet), never an L2 failure.
var ErrWrongType = errors.New("tiered: L2 key of the wrong Redis type")

// ErrUnavailable reports that L2 could not be used (tiered.ErrL2Unavailable).
var ErrUnavailable = errors.New("tiered: L2 unavailable")

var (
	errBreakerOpen = fmt.Errorf("%w: circuit open", ErrUnavailable)
	errUntrusted   = fmt.Errorf("%w: not read while this process holds invalidations Redis has not had", ErrUnavailable)
)

// Tier is the shared tier: a gocache store behind a per-call timeout and a
// circuit breaker, so that a dead or hung Redis costs a reader microseconds
// instead of go-redis's default 1.7 s of dials and retries.
//
// It is safe for concurrent use.
type Tier struct {
	store store.StoreInterface
	// rdb is Config.Redis, for what a gocache store cannot do (leases,
	// tags); nil when the L2 is a Config.Store alone.
	rdb     redis.UniversalClient
	timeout time.Duration
	breaker *gobreaker.TwoStepCircuitBreaker[struct{}]
	held    *atomic.Int64
	clock   clock.Clock
	// failing is when (Unix ns) the current run of failed calls began; 0
	// after a success.
	failing atomic.Int64
}

// Config configures a Tier.
type Config struct {
	Store store.StoreInterface // required
	// Redis is the client behind Store, for leases, scripts and
	// pipelines; nil when Store is not Redis.
	Redis   redis.UniversalClient
	Timeout time.Duration // of one call
	// The breaker opens after BreakerFailures failures in a row that span
	// at least two Timeouts, and lets a probe through after
	// BreakerCooldown.
	BreakerFailures int
	BreakerCooldown time.Duration
	Name            string // the breaker's
	// Held counts invalidations this process owes Redis; while it is
	// nonzero, reads do not trust L2. Nil: none.
	Held *atomic.Int64
	// Clock dates leases; nil: the system clock.
	Clock clock.Clock
	// OnStateChange, if set, hears every change of the breaker's state.
	OnStateChange func(from, to gobreaker.State)
}

// New returns a Tier over cfg.Store.
func New(cfg Config) *Tier {
	if cfg.Held == nil {
		cfg.Held = new(atomic.Int64)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	l := &Tier{store: cfg.Store, rdb: cfg.Redis, timeout: cfg.Timeout, held: cfg.Held, clock: cfg.Clock}
	failures := uint32(cfg.BreakerFailures)
	// The failures must also span two timeouts: one stall of the machine or
	// the network fails every call in flight at once, and must not cut L2
	// off for a whole cooldown.
	span := 2 * cfg.Timeout
	l.breaker = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:    cfg.Name,
		Timeout: cfg.BreakerCooldown,
		ReadyToTrip: func(n gobreaker.Counts) bool {
			return n.ConsecutiveFailures >= failures && l.failingFor() >= span
		},
		IsExcluded: func(err error) bool { return err == errExcluded },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if cfg.OnStateChange != nil {
				cfg.OnStateChange(from, to)
			}
		},
	})
	return l
}

// Redis returns the go-redis client, or nil when the L2 is a gocache store
// alone.
func (l *Tier) Redis() redis.UniversalClient { return l.rdb }

// failingFor is how long calls have failed without a success between.
func (l *Tier) failingFor() time.Duration {
	if at := l.failing.Load(); at != 0 {
		return time.Duration(time.Now().UnixNano() - at)
	}
	return 0
}

// Call runs a read (or a fill) under the breaker and the timeout. A
// failure caused by the caller's own context (cancelled, or its deadline
// passed) says nothing about Redis, so it is not counted against the
// breaker; nor is a key of the wrong type.
func (l *Tier) Call(ctx context.Context, op func(ctx context.Context) error) error {
	if l.held.Load() > 0 {
		return errUntrusted
	}
	done, err := l.breaker.Allow()
	if err != nil {
		return errBreakerOpen
	}
	tctx, cancel := context.WithTimeout(ctx, l.timeout)
	err = op(tctx)
	cancel()
	switch {
	case err == nil, errors.Is(err, ErrMiss), errors.Is(err, ErrLeaseLost), errors.Is(err, ErrWrongType):
		l.failing.Store(0)
		done(nil)
	case ctx.Err() != nil:
		done(errExcluded)
	default:
		l.failing.CompareAndSwap(0, time.Now().UnixNano())
		done(err)
	}
	return err
}

// Must runs one attempt at a write's L2 change under the timeout, but not
// the breaker: a write is retried, and then reports what it could not do,
// rather than skipped the way a read is.
func (l *Tier) Must(ctx context.Context, op func(ctx context.Context) error) error {
	tctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	return op(tctx)
}

// errExcluded marks a breaker outcome that is neither success nor failure.
var errExcluded = errors.New("excluded")

// IsWrongType reports Redis's WRONGTYPE error.
func IsWrongType(err error) bool { return err != nil && redis.HasErrorPrefix(err, "WRONGTYPE") }

func (l *Tier) Get(ctx context.Context, key string) ([]byte, error) {
	var b []byte
	err := l.Call(ctx, func(ctx context.Context) error {
		v, err := l.store.Get(ctx, key)
		if err != nil {
			switch {
			case errors.Is(err, store.NotFound{}):
				return ErrMiss
			case IsWrongType(err):
				return ErrWrongType
			}
			return err
		}
		switch v := v.(type) {
		case string:
			b = []byte(v)
		case []byte:
			b = v
		default:
			return fmt.Errorf("store returned %T, want string or []byte", v)
		}
		return nil
	})
	return b, err
}

// Set stores a fill (under the breaker: see call).
func (l *Tier) Set(ctx context.Context, key string, b []byte, ttl time.Duration) error {
	return l.Call(ctx, func(ctx context.Context) error { return l.Put(ctx, key, b, ttl) })
}

// Put is one SET, for call or must.
func (l *Tier) Put(ctx context.Context, key string, b []byte, ttl time.Duration) error {
	return l.store.Set(ctx, key, b, store.WithExpiration(ttl))
}

// DelMany deletes keys: one DEL per key, pipelined, since a multi-key DEL
// fails on Redis Cluster when the keys hash to different slots.
func (l *Tier) DelMany(ctx context.Context, keys []string) error {
	if l.rdb == nil {
		var errs []error
		for _, k := range keys {
			errs = append(errs, l.store.Delete(ctx, k))
		}
		return errors.Join(errs...)
	}
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Del(ctx, k)
		}
		return nil
	})
	return err
}
