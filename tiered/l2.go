package tiered

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/eko/gocache/lib/v4/store"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// errL2Miss is the L2 tier's "no such key", translated from gocache's
// store.NotFound (and so from redis.Nil) at this boundary.
var errL2Miss = errors.New("tiered: not in L2")

// errL2WrongType is a key that holds another Redis type than a string:
// garbage that a load replaces (see leaseOrGet), never an L2 failure.
var errL2WrongType = errors.New("tiered: L2 key of the wrong Redis type")

// ErrL2Unavailable reports that L2 could not be used. Writes (Set, Delete,
// InvalidateTags, the write strategies) return it whenever they could not
// make their L2 change or their invalidation within Config.WriteTimeout;
// reads return it only in strict mode: while the circuit breaker is open,
// or while this process holds invalidations that Redis has not had yet (it
// reads nothing from L2 then). Errors that wrap it also wrap the cause.
var ErrL2Unavailable = errors.New("tiered: L2 unavailable")

var (
	errBreakerOpen = fmt.Errorf("%w: circuit open", ErrL2Unavailable)
	errUntrusted   = fmt.Errorf("%w: not read while this process holds invalidations Redis has not had", ErrL2Unavailable)
)

// l2 is the shared tier: a gocache store behind a per-call timeout and a
// circuit breaker, so that a dead or hung Redis costs a reader microseconds
// instead of go-redis's default 1.7 s of dials and retries.
//
// It is safe for concurrent use.
type l2 struct {
	store store.StoreInterface
	// rdb is Config.Redis, for what a gocache store cannot do (leases,
	// tags); nil when the L2 is a Config.Store alone.
	rdb     redis.UniversalClient
	timeout time.Duration
	breaker *gobreaker.TwoStepCircuitBreaker[struct{}]
	// held is the outbox's count of invalidations not made yet: while it is
	// nonzero, reads do not trust L2.
	held *atomic.Int64
	// failing is when (Unix ns) the current run of failed calls began; 0
	// after a success.
	failing atomic.Int64
}

// failingFor is how long calls have failed without a success between.
func (l *l2) failingFor() time.Duration {
	if at := l.failing.Load(); at != 0 {
		return time.Duration(time.Now().UnixNano() - at)
	}
	return 0
}

// call runs a read (or a fill) under the breaker and the timeout. A
// failure caused by the caller's own context (cancelled, or its deadline
// passed) says nothing about Redis, so it is not counted against the
// breaker; nor is a key of the wrong type.
func (l *l2) call(ctx context.Context, op func(ctx context.Context) error) error {
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
	case err == nil, errors.Is(err, errL2Miss), errors.Is(err, errLeaseLost), errors.Is(err, errL2WrongType):
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

// must runs one attempt at a write's L2 change under the timeout, but not
// the breaker: a write is retried, and then reports what it could not do,
// rather than skipped the way a read is.
func (l *l2) must(ctx context.Context, op func(ctx context.Context) error) error {
	tctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	return op(tctx)
}

// errExcluded marks a breaker outcome that is neither success nor failure.
var errExcluded = errors.New("excluded")

// isWrongType reports Redis's WRONGTYPE error.
func isWrongType(err error) bool { return err != nil && redis.HasErrorPrefix(err, "WRONGTYPE") }

func (l *l2) get(ctx context.Context, key string) ([]byte, error) {
	var b []byte
	err := l.call(ctx, func(ctx context.Context) error {
		v, err := l.store.Get(ctx, key)
		if err != nil {
			switch {
			case errors.Is(err, store.NotFound{}):
				return errL2Miss
			case isWrongType(err):
				return errL2WrongType
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

// set stores a fill (under the breaker: see call).
func (l *l2) set(ctx context.Context, key string, b []byte, ttl time.Duration) error {
	return l.call(ctx, func(ctx context.Context) error { return l.put(ctx, key, b, ttl) })
}

// put is one SET, for call or must.
func (l *l2) put(ctx context.Context, key string, b []byte, ttl time.Duration) error {
	return l.store.Set(ctx, key, b, store.WithExpiration(ttl))
}

// delMany deletes keys: one DEL per key, pipelined, since a multi-key DEL
// fails on Redis Cluster when the keys hash to different slots.
func (l *l2) delMany(ctx context.Context, keys []string) error {
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
