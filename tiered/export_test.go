package tiered

import (
	"context"

	gocacheredis "github.com/eko/gocache/store/redis/v4"

	"github.com/tiercache/tiercache/internal/fence"
	"github.com/tiercache/tiercache/internal/l2"
)

// Test hooks for package tiered_test.

// DisableFences switches off the L1 tickets and the L2 leases of c, so that
// a test can show the stale fill they prevent: its fence lets every fill in,
// and its L2 is Config.Redis through gocache alone, which has no leases.
// Call it before c is used.
func DisableFences[V any](c *Cache[V]) {
	c.fence = openFence{}
	c.l2 = c.newL2(gocacheredis.NewRedis(c.cfg.Redis), nil)
}

// openFence lets every fill in.
type openFence struct{}

func (openFence) Ticket(string, []string) fence.Ticket { return fence.Ticket{} }
func (openFence) Valid(fence.Ticket) bool              { return true }
func (openFence) TagsValid([]fence.TagTicket) bool     { return true }
func (openFence) Invalidate(string)                    {}
func (openFence) InvalidateTag(string)                 {}
func (openFence) InvalidateAll()                       {}

// PeekL1 returns what c's L1 holds for key, without touching L2, once
// ristretto has applied the stores queued so far.
func PeekL1[V any](c *Cache[V], key string) (v V, negative, ok bool) {
	c.l1.Wait()
	e, ok := c.l1.Lookup(key)
	if !ok {
		return v, false, false
	}
	return e.Value.v, e.Value.negative, true
}

// NewWriteBehindUnlocked is NewWriteBehind without the shard locks: every
// process flushes every shard, as a bare consumer group would have it.
func NewWriteBehindUnlocked[V any](c *Cache[V], cfg WriteBehindConfig[V]) (*WriteBehind[V], error) {
	return newWriteBehind(c, cfg, noLocks{})
}

// noLocks grant every shard to everyone.
type noLocks struct{}

func (noLocks) Acquire(context.Context, string) bool { return true }
func (noLocks) Renew(context.Context, string) error  { return nil }
func (noLocks) Release(context.Context, string)      {}
func (noLocks) Owner() string                        { return "" }

// SetOutboxLimit changes how many invalidations c's outbox holds; 0 makes
// it keep none, so that a test can show what the outbox prevents.
func SetOutboxLimit[V any](c *Cache[V], n int) {
	c.outbox.SetLimit(n)
}

// Streams returns the names of w's shard streams.
func Streams[V any](w *WriteBehind[V]) []string { return w.q.Streams() }

// KeySlot is the Redis Cluster hash slot that write-behind computes for a
// key without a hash tag.
func KeySlot(key string) int { return l2.KeySlot(key) }
