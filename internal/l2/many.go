package l2

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// Batch operations on L2, each one pipelined round trip (one per node on
// Redis Cluster, where go-redis splits a pipeline by slot). They need the
// go-redis client: gocache's store interface has neither pipelines nor
// scripts.

// GetMany returns the bytes under each key, nil where there are none or
// where a key holds another type (garbage, which a lease replaces). It is
// one MGET; on Redis Cluster, one MGET per hash slot, pipelined (go-redis
// sends each node its share), since an MGET must not cross slots.
func (l *Tier) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	err := l.Call(ctx, func(ctx context.Context) error {
		if _, cluster := l.rdb.(*redis.ClusterClient); !cluster {
			vals, err := l.rdb.MGet(ctx, keys...).Result()
			if err != nil {
				return err
			}
			fillValues(out, nil, vals)
			return nil
		}
		slots := bySlot(keys)
		cmds, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, idx := range slots {
				ks := make([]string, len(idx))
				for j, i := range idx {
					ks[j] = keys[i]
				}
				p.MGet(ctx, ks...)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for n, cmd := range cmds {
			fillValues(out, slots[n], cmd.(*redis.SliceCmd).Val())
		}
		return nil
	})
	return out, err
}

// fillValues puts an MGET's string replies into out, at idx[j] for reply j
// (at j if idx is nil); nil replies (absent, or another type) stay nil.
func fillValues(out [][]byte, idx []int, vals []any) {
	for j, v := range vals {
		if s, ok := v.(string); ok {
			i := j
			if idx != nil {
				i = idx[j]
			}
			out[i] = []byte(s)
		}
	}
}

// bySlot groups the indexes of keys by their hash slot, in first-seen order.
func bySlot(keys []string) [][]int {
	var groups [][]int
	at := make(map[int]int, len(keys))
	for i, k := range keys {
		s := KeySlot(k)
		g, ok := at[s]
		if !ok {
			g = len(groups)
			at[s] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], i)
	}
	return groups
}

// LeaseMany is acquireLease for many keys: for each, held reports a lease
// taken (its bytes in leases), else cur holds what the key holds. junk[i],
// if not nil, is what keys[i] held that its reader judged junk.
func (l *Tier) LeaseMany(ctx context.Context, keys []string, junk [][]byte, ttl time.Duration) (leases [][]byte, held []bool, cur [][]byte, err error) {
	if len(keys) == 1 {
		// One key: one script call, which costs less than a pipeline.
		lease, h, c, err := l.AcquireLease(ctx, keys[0], junk[0], ttl)
		return [][]byte{lease}, []bool{h}, [][]byte{c}, err
	}
	leases, held, cur = make([][]byte, len(keys)), make([]bool, len(keys)), make([][]byte, len(keys))
	for i := range keys {
		leases[i] = NewLease(l.clock.Now(), ttl)
	}
	ms := max(ttl.Milliseconds(), 1)
	err = l.pipelineScript(ctx, LeaseOrGet, keys, func(i int) []any { return []any{junk[i], leases[i], ms} }, func(i int, v any) error {
		switch v := v.(type) {
		case int64:
			held[i] = v == 1
		case string:
			cur[i] = []byte(v)
		default:
			return fmt.Errorf("lease script returned %T", v)
		}
		return nil
	})
	return leases, held, cur, err
}

// FillMany is fillLeased for many keys; lost[i] reports a lease gone.
func (l *Tier) FillMany(ctx context.Context, keys []string, leases, values [][]byte, ttls []time.Duration) (lost []bool, err error) {
	if len(keys) == 1 {
		err := l.FillLeased(ctx, keys[0], leases[0], values[0], ttls[0])
		if errors.Is(err, ErrLeaseLost) {
			return []bool{true}, nil
		}
		return []bool{false}, err
	}
	lost = make([]bool, len(keys))
	err = l.pipelineScript(ctx, casFill, keys, func(i int) []any {
		return []any{leases[i], values[i], max(ttls[i].Milliseconds(), 1)}
	}, func(i int, v any) error {
		lost[i] = v == nil
		return nil
	})
	return lost, err
}

// ReleaseMany is releaseLease for many keys.
func (l *Tier) ReleaseMany(ctx context.Context, keys []string, leases [][]byte) error {
	if len(keys) == 1 {
		return l.ReleaseLease(ctx, keys[0], leases[0])
	}
	return l.pipelineScript(ctx, LeaseRelease, keys, func(i int) []any { return []any{leases[i]} }, func(int, any) error { return nil })
}

// pipelineScript runs script once per key (KEYS[1] = keys[i], ARGV =
// args(i)) in one pipeline and hands each reply to each: a nil reply is
// Redis's nil. A pipeline cannot fall back from EVALSHA to EVAL per
// command, so when Redis does not know the script (a restart flushed it),
// it loads it and runs the pipeline again.
func (l *Tier) pipelineScript(ctx context.Context, script *redis.Script, keys []string, args func(i int) []any, each func(i int, v any) error) error {
	return l.Call(ctx, func(ctx context.Context) error {
		for attempt := 0; ; attempt++ {
			cmds, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i, k := range keys {
					script.EvalSha(ctx, p, []string{k}, args(i)...)
				}
				return nil
			})
			if attempt == 0 && slices.ContainsFunc(cmds, func(c redis.Cmder) bool { return redis.HasErrorPrefix(c.Err(), "NOSCRIPT") }) {
				// Pipelined reports the first error only, which may be a
				// script's nil reply: look at every command.
				if err := script.Load(ctx, l.rdb).Err(); err != nil {
					return err
				}
				continue
			}
			if err != nil && !errors.Is(err, redis.Nil) {
				return err
			}
			for i, cmd := range cmds {
				v, err := cmd.(*redis.Cmd).Result()
				if errors.Is(err, redis.Nil) {
					v, err = nil, nil
				}
				if err != nil {
					return err
				}
				if err := each(i, v); err != nil {
					return err
				}
			}
			return nil
		}
	})
}
