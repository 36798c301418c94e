package tiered

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// Hot keys. With Config.HotKeys set, the cache samples one read in
// hotSample and keeps the most-read keys (a Space-Saving summary,
// Metwally et al., 2005, of four times Config.HotKeys counters: its counts
// overestimate by at most samples/capacity, so the spare room keeps the
// tail from passing for hot), and every Config.HotKeysInterval adds the
// counts of that interval to a sorted set in Redis ("<Namespace>#hot").
// Once an interval, one replica (the first to claim the interval) halves
// the whole set, so that what was hot an hour ago fades, however many
// replicas write. A new replica warms with what the cluster reads now
// (warmup.FromHotKeys).

const hotSample = 64

// hotKeys is the sampled summary. Samples reach it through a buffered
// channel, dropped when full: the read path never waits.
type hotKeys struct {
	n        int // keys published
	capacity int // keys counted
	interval time.Duration
	samples  chan string
	counts   map[string]int64 // owned by the run goroutine
	stop     chan struct{}
	done     chan struct{}
}

func newHotKeys(n int, interval time.Duration) *hotKeys {
	return &hotKeys{n: n, capacity: max(4*n, 64), interval: interval, samples: make(chan string, 1024), counts: make(map[string]int64, n),
		stop: make(chan struct{}), done: make(chan struct{})}
}

// sample is called on every read with a key; it costs a random draw.
func (h *hotKeys) sample(key string) {
	if rand.Uint32()%hotSample != 0 {
		return
	}
	select {
	case h.samples <- key:
	default:
	}
}

// add counts one sample, Space-Saving style: a new key takes the place of
// the least counted one when the summary is full, inheriting its count.
func (h *hotKeys) add(key string) {
	if _, ok := h.counts[key]; ok || len(h.counts) < h.capacity {
		h.counts[key]++
		return
	}
	var minKey string
	minCount := int64(-1)
	for k, c := range h.counts {
		if minCount < 0 || c < minCount {
			minKey, minCount = k, c
		}
	}
	delete(h.counts, minKey)
	h.counts[key] = minCount + 1
}

// run folds samples in and publishes the summary every interval.
func (h *hotKeys) run(publish func(map[string]int64)) {
	defer close(h.done)
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case k := <-h.samples:
			h.add(k)
		case <-t.C:
			// Each interval's counts go out once; the set in Redis does
			// the aging.
			publish(h.top())
			clear(h.counts)
		}
	}
}

// top returns the n most counted keys and their counts.
func (h *hotKeys) top() map[string]int64 {
	keys := make([]string, 0, len(h.counts))
	for k := range h.counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(h.counts[b], h.counts[a]) })
	out := make(map[string]int64, min(h.n, len(keys)))
	for _, k := range keys[:min(h.n, len(keys))] {
		out[k] = h.counts[k]
	}
	return out
}

func (h *hotKeys) close() {
	close(h.stop)
	<-h.done
}

// publishHot adds the summary's counts to the namespace's hot-key sorted
// set, which lives a day past its last update.
func (c *Cache[V]) publishHot(counts map[string]int64) {
	if len(counts) == 0 || c.cfg.Redis == nil {
		return
	}
	key := hotKey(c.cfg.Namespace)
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.L2Timeout)
	defer cancel()
	interval := c.cfg.HotKeysInterval
	claim := fmt.Sprintf("%s:decay:%d", key, time.Now().UnixMilli()/max(interval.Milliseconds(), 1))
	err := c.l2.call(ctx, func(ctx context.Context) error {
		// One replica an interval halves the set before adding.
		if won, err := c.cfg.Redis.SetNX(ctx, claim, 1, 2*interval).Result(); err != nil {
			return err
		} else if won {
			if err := c.cfg.Redis.ZUnionStore(ctx, key, &redis.ZStore{Keys: []string{key}, Weights: []float64{0.5}}).Err(); err != nil {
				return err
			}
		}
		_, err := c.cfg.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
			for k, n := range counts {
				p.ZIncrBy(ctx, key, float64(n), k)
			}
			p.Expire(ctx, key, 24*time.Hour)
			return nil
		})
		return err
	})
	if err != nil {
		c.l2Failed(ctx, "hot-keys", key, err)
	}
}

// HotKeys returns up to n of the keys (all for n ≤ 0) the cluster reads most (needs
// Config.Redis and Config.HotKeys in the caches that read), most read
// first. For warm-up: warmup.FromHotKeys.
func (c *Cache[V]) HotKeys(ctx context.Context, n int) ([]string, error) {
	if c.cfg.Redis == nil {
		return nil, fmt.Errorf("tiered: HotKeys needs Config.Redis")
	}
	stop := int64(n) - 1 // n ≤ 0: all of them
	keys, err := c.cfg.Redis.ZRevRange(ctx, hotKey(c.cfg.Namespace), 0, stop).Result()
	if err != nil {
		return nil, fmt.Errorf("tiered: hot keys: %w", err)
	}
	return keys, nil
}

func hotKey(ns string) string { return ns + "#hot" }
