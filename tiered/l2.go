package tiered

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/eko/gocache/lib/v4/store"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// errL2Miss is the L2 tier's "no such key", translated from gocache's
// store.NotFound (and so from redis.Nil) at this boundary.
var errL2Miss = errors.New("tiered: not in L2")

// ErrL2Unavailable is returned in strict mode when the circuit breaker in
// front of L2 is open; in the default fail-open mode it is only counted.
var ErrL2Unavailable = errors.New("tiered: L2 unavailable (circuit open)")

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
}

// call runs op under the breaker and the timeout. A failure caused by the
// caller's own context (cancelled, or its deadline passed) says nothing about
// Redis, so it is not counted against the breaker.
func (l *l2) call(ctx context.Context, op func(ctx context.Context) error) error {
	done, err := l.breaker.Allow()
	if err != nil {
		return ErrL2Unavailable
	}
	tctx, cancel := context.WithTimeout(ctx, l.timeout)
	err = op(tctx)
	cancel()
	switch {
	case err == nil, errors.Is(err, errL2Miss), errors.Is(err, errLeaseLost):
		done(nil)
	case ctx.Err() != nil:
		done(errExcluded)
	default:
		done(err)
	}
	return err
}

// errExcluded marks a breaker outcome that is neither success nor failure.
var errExcluded = errors.New("excluded")

func (l *l2) get(ctx context.Context, key string) ([]byte, error) {
	var b []byte
	err := l.call(ctx, func(ctx context.Context) error {
		v, err := l.store.Get(ctx, key)
		if err != nil {
			if errors.Is(err, store.NotFound{}) {
				return errL2Miss
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

func (l *l2) set(ctx context.Context, key string, b []byte, ttl time.Duration) error {
	return l.call(ctx, func(ctx context.Context) error {
		return l.store.Set(ctx, key, b, store.WithExpiration(ttl))
	})
}

func (l *l2) del(ctx context.Context, key string) error {
	return l.call(ctx, func(ctx context.Context) error {
		return l.store.Delete(ctx, key)
	})
}
