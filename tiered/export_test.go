package tiered

// Test hooks for package tiered_test.

// DisableFences switches off the L1 tickets and the L2 leases of c, so that
// a test can show the stale fill they prevent.
func DisableFences[V any](c *Cache[V]) { c.noFence = true }

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
	return newWriteBehind(c, cfg, true)
}

// SetOutboxLimit changes how many invalidations c's outbox holds; 0 makes
// it keep none, so that a test can show what the outbox prevents.
func SetOutboxLimit[V any](c *Cache[V], n int) {
	c.outbox.mu.Lock()
	c.outbox.limit = n
	c.outbox.mu.Unlock()
}

// Streams returns the names of w's shard streams.
func Streams[V any](w *WriteBehind[V]) []string { return w.streams }

// KeySlot is the Redis Cluster hash slot that write-behind computes for a
// key without a hash tag.
func KeySlot(key string) int { return keySlot(key) }
