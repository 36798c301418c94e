package l2

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// AddHot adds a replica's read counts to the namespace's hot-key set, for
// Call. The first replica of each interval halves the set first, so that
// counts decay by half an interval and the set follows what is read now.
func (l *Tier) AddHot(ctx context.Context, ns string, counts map[string]int64, interval time.Duration) error {
	key := HotKey(ns)
	claim := fmt.Sprintf("%s:decay:%d", key, time.Now().UnixMilli()/max(interval.Milliseconds(), 1))
	if won, err := l.rdb.SetNX(ctx, claim, 1, 2*interval).Result(); err != nil {
		return err
	} else if won {
		if err := l.rdb.ZUnionStore(ctx, key, &redis.ZStore{Keys: []string{key}, Weights: []float64{0.5}}).Err(); err != nil {
			return err
		}
	}
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for k, n := range counts {
			p.ZIncrBy(ctx, key, float64(n), k)
		}
		p.Expire(ctx, key, 24*time.Hour)
		return nil
	})
	return err
}

// Hot returns up to n (all for n ≤ 0) of the namespace's most read keys,
// most read first.
func (l *Tier) Hot(ctx context.Context, ns string, n int) ([]string, error) {
	return l.rdb.ZRevRange(ctx, HotKey(ns), 0, int64(n)-1).Result()
}
