package l2

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Leases fence L2 fills, after Facebook's memcache leases: a process that
// misses and is about to load puts a lease (an envelope with FlagLease and
// a random token) on the key with SET NX, and writes its loaded value only
// through casFill, which replaces the lease if it is still there. A Set
// overwrites the lease and a Delete removes it, so a load that started
// before either can no longer write its older value over theirs.
//
// These calls need the go-redis client itself (a gocache store has no SET
// NX or scripts); with Config.Store alone, loads write without a lease.

// LeaseSkew is how much later than LeaseTTL from now a lease may end
// before it is taken for garbage: clocks of the processes may differ.
const LeaseSkew = time.Second

// ErrBadLease is a lease that ends later than any lease can.
var ErrBadLease = errors.New("lease without an end in reach: garbage")

// ErrLeaseLost reports a fill refused because its lease was gone.
var ErrLeaseLost = errors.New("tiered: lease lost to a write, delete or expiry")

// AcquireLease puts a lease on key and returns its bytes. When it cannot
// (held false), cur is what the key holds instead: a value written since,
// or another process's lease. junk is the bytes a reader judged junk (nil
// if none), which the lease may replace.
func (l *Tier) AcquireLease(ctx context.Context, key string, junk []byte, ttl time.Duration) (lease []byte, held bool, cur []byte, err error) {
	lease = NewLease(l.clock.Now(), ttl)
	err = l.Call(ctx, func(ctx context.Context) error {
		v, err := LeaseOrGet.Run(ctx, l.rdb, []string{key}, junk, lease, max(ttl.Milliseconds(), 1)).Result()
		if err != nil {
			return err
		}
		switch v := v.(type) {
		case int64:
			held = v == 1
		case string:
			cur = []byte(v)
		default:
			return fmt.Errorf("lease script returned %T", v)
		}
		return nil
	})
	return lease, held, cur, err
}

// NewLease returns a lease envelope with a random token, expiring after ttl.
func NewLease(now time.Time, ttl time.Duration) []byte {
	var token [16]byte
	_, _ = rand.Read(token[:])
	return AppendEnvelope(nil, 0, FlagLease, now.Add(ttl), token[:])
}

// FillLeased writes b under key for ttl if key still holds lease.
func (l *Tier) FillLeased(ctx context.Context, key string, lease, b []byte, ttl time.Duration) error {
	return l.Call(ctx, func(ctx context.Context) error {
		err := casFill.Run(ctx, l.rdb, []string{key}, lease, b, max(ttl.Milliseconds(), 1)).Err()
		if errors.Is(err, redis.Nil) {
			return ErrLeaseLost
		}
		return err
	})
}

// ReleaseLease gives up a lease that will not be filled (the load failed,
// or its value is not to be cached), so that the next process to miss can
// take one instead of waiting out LeaseTTL.
func (l *Tier) ReleaseLease(ctx context.Context, key string, lease []byte) error {
	return l.Call(ctx, func(ctx context.Context) error {
		return LeaseRelease.Run(ctx, l.rdb, []string{key}, lease).Err()
	})
}
