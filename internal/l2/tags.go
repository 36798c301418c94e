package l2

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// AddTags records each key in the set of each tag, for Call or Must. One
// round trip: the scripts are pipelined, and on Redis Cluster go-redis
// splits the pipeline by node.
func (l *Tier) AddTags(ctx context.Context, ns string, keys, tags []string, ttl time.Duration) error {
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			for _, t := range tags {
				// Eval, not Run: a pipeline cannot fall back from EVALSHA.
				tagAdd.Eval(ctx, p, []string{TagKey(ns, t)}, k, max(ttl.Milliseconds(), 1))
			}
		}
		return nil
	})
	return err
}

// TagSize returns how many keys the tag set tk lists, for Must. A tag key
// of another Redis type is garbage: it is deleted, and the size is 0.
func (l *Tier) TagSize(ctx context.Context, tk string) (int64, error) {
	n, err := l.rdb.SCard(ctx, tk).Result()
	if IsWrongType(err) {
		return 0, DropUnlessType.Run(ctx, l.rdb, []string{tk}, "set").Err()
	}
	return n, err
}

// PopTag takes up to n keys out of the tag set tk, for Must.
func (l *Tier) PopTag(ctx context.Context, tk string, n int) ([]string, error) {
	return l.rdb.SPopN(ctx, tk, int64(n)).Result()
}

// RestoreTag puts keys back into the tag set tk, for Must.
func (l *Tier) RestoreTag(ctx context.Context, tk string, keys []string) error {
	members := make([]any, len(keys))
	for i, k := range keys {
		members[i] = k
	}
	return l.rdb.SAdd(ctx, tk, members...).Err()
}

// TagMembers returns the keys the tag set tk lists, for Call.
func (l *Tier) TagMembers(ctx context.Context, tk string) ([]string, error) {
	return l.rdb.SMembers(ctx, tk).Result()
}
