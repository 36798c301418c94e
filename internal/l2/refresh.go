package l2

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// A refresh reloads a value that L2 still holds. Its lease lives beside the
// value (RefreshKey), not in its place, so that readers keep being served
// the old value while one process reloads it.

// TakeRefreshLease puts a refresh lease on rk, for Call; held is false if
// another process holds one.
func (l *Tier) TakeRefreshLease(ctx context.Context, rk string, ttl time.Duration) (token []byte, held bool, err error) {
	token = NewLease(l.clock.Now(), ttl)
	held, err = l.rdb.SetNX(ctx, rk, token, ttl).Result()
	return token, held, err
}

// Replace sets key to b for ttl if it still holds old, for Call: a refresh
// replaces the value it read, and nothing written since. replaced is false
// if key changed.
func (l *Tier) Replace(ctx context.Context, key string, old, b []byte, ttl time.Duration) (replaced bool, err error) {
	sum := sha1.Sum(old)
	n, err := CASReplace.Run(ctx, l.rdb, []string{key}, hex.EncodeToString(sum[:]), b, max(ttl.Milliseconds(), 1)).Int()
	return n == 1, err
}

// PollRefresh reads key and whether the refresh lease rk is still held, in
// one round trip, for Call.
func (l *Tier) PollRefresh(ctx context.Context, key, rk string) (b []byte, leased bool, err error) {
	cmds, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Get(ctx, key)
		p.Exists(ctx, rk)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, false, err
	}
	b, _ = cmds[0].(*redis.StringCmd).Bytes()
	return b, cmds[1].(*redis.IntCmd).Val() != 0, nil
}

// HeldWrite is a write-behind value that L2 did not get: its envelope and
// its write's entry ID.
type HeldWrite struct {
	Envelope []byte
	ID       EntryID
}

// PutWrites writes held write-behind values (by the key of namespace ns),
// each unless L2 has a newer write of its key, for Call or Must.
func (l *Tier) PutWrites(ctx context.Context, ns string, puts map[string]HeldWrite) error {
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for k, h := range puts {
			WBPut.Eval(ctx, p, []string{Key(ns, k)}, h.Envelope, h.ID.MS, h.ID.Seq, 0, "put")
		}
		return nil
	})
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	return err
}
