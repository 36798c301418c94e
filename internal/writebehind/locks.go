package writebehind

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/l2"
)

// Locks are the shard locks that make each shard a queue with one reader.
// Their one implementation is Redis's; a test replaces them with none, to
// show the reordering they prevent.
type Locks interface {
	// Acquire takes the lock of the shard whose stream is stream, or takes
	// it back if this process still holds it.
	Acquire(ctx context.Context, stream string) bool
	// Renew extends the lock; errLockLost if this process lost it.
	Renew(ctx context.Context, stream string) error
	// Release gives the lock up if this process still holds it.
	Release(ctx context.Context, stream string)
	// Owner is the holder's name, checked by every acknowledgement; ""
	// skips the check.
	Owner() string
}

// redisLocks keep each lock in l2.LockKey(stream), in the stream's slot,
// holding the owner's consumer name for ttl.
type redisLocks struct {
	rdb   redis.UniversalClient
	owner string
	ttl   time.Duration
}

func (l redisLocks) Acquire(ctx context.Context, stream string) bool {
	v, err := l2.LeaseOrGet.Run(ctx, l.rdb, []string{l2.LockKey(stream)}, l.owner, l.owner, l.ttl.Milliseconds()).Result()
	return err == nil && v == int64(1)
}

func (l redisLocks) Renew(ctx context.Context, stream string) error {
	n, err := l2.RenewLock.Run(ctx, l.rdb, []string{l2.LockKey(stream)}, l.owner, l.ttl.Milliseconds()).Int()
	switch {
	case err != nil:
		return fmt.Errorf("renew the shard lock: %w", err)
	case n != 1:
		return errLockLost
	}
	return nil
}

func (l redisLocks) Release(ctx context.Context, stream string) {
	_ = l2.LeaseRelease.Run(ctx, l.rdb, []string{l2.LockKey(stream)}, l.owner).Err()
}

func (l redisLocks) Owner() string { return l.owner }
