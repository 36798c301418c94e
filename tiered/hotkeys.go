package tiered

import (
	"context"
	"fmt"

	"github.com/tiercache/tiercache/internal/l2"
)

// publishHot adds the summary's counts to the namespace's hot-key sorted
// set, which lives a day past its last update.
func (c *Cache[V]) publishHot(counts map[string]int64) {
	if len(counts) == 0 || c.cfg.Redis == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.L2Timeout)
	defer cancel()
	err := c.l2.Call(ctx, func(ctx context.Context) error {
		return c.l2.AddHot(ctx, c.cfg.Namespace, counts, c.cfg.HotKeysInterval)
	})
	if err != nil {
		c.l2Failed(ctx, "hot-keys", l2.HotKey(c.cfg.Namespace), err)
	}
}

// HotKeys returns up to n (all for n ≤ 0) of the keys the cluster reads
// most, most read first, for warm-up (warmup.FromHotKeys). It fails without
// Config.Redis; the caches that read need Config.HotKeys.
func (c *Cache[V]) HotKeys(ctx context.Context, n int) ([]string, error) {
	if c.cfg.Redis == nil {
		return nil, fmt.Errorf("tiered: HotKeys needs Config.Redis")
	}
	keys, err := c.l2.Hot(ctx, c.cfg.Namespace, n)
	if err != nil {
		return nil, fmt.Errorf("tiered: hot keys: %w", err)
	}
	return keys, nil
}
