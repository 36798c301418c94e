package tiered

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The outbox keeps the L2 invalidations that a write could not make within
// Config.WriteTimeout (a key to delete, a tag to purge, a write-behind value
// to put), and replays them, with their publishes, as soon as Redis answers
// again. While it holds any, this process reads nothing from L2: an entry
// that it failed to delete may still be there, and reading it back would
// undo the write that failed. Other processes cannot know of it; what they
// may see until the replay is in docs/consistency.md.
//
// One goroutine replays at a time. A write that meets a non-empty outbox
// whose last replay failed fails at once instead of waiting out its own
// WriteTimeout against a Redis already known to be down.
type outbox struct {
	mu      sync.Mutex // guards keys, tags, puts and running
	keys    map[string]struct{}
	tags    map[string]struct{}
	puts    map[string]heldPut // write-behind values, by key: the newest
	running bool               // a replay goroutine runs

	held  atomic.Int64 // len(keys)+len(tags)+len(puts): nonzero, and L2 is not trusted
	down  atomic.Bool  // the last replay failed: Redis is down for writes
	kick  chan struct{}
	limit int // entries held at most; what is past it is dropped, logged and counted

	replayMu sync.Mutex // one replay at a time: the goroutine's, or Close's last
	dropped  atomic.Int64
	replays  atomic.Int64
}

// outboxLimit bounds the outbox, so that an outage under a heavy write load
// costs bounded memory: about 100 bytes per key held.
const outboxLimit = 1 << 16

// heldPut is a write-behind value that L2 did not get: its envelope and
// its write's entry ID.
type heldPut struct {
	b  []byte
	id entryID
}

func newOutbox() *outbox {
	return &outbox{
		keys: make(map[string]struct{}), tags: make(map[string]struct{}), puts: make(map[string]heldPut),
		kick: make(chan struct{}, 1), limit: outboxLimit,
	}
}

// add holds keys to delete, tags to purge and a write-behind value to put
// (nil: none), and reports whether it had room for them all. It returns
// whether a replay goroutine must be started.
func (o *outbox) add(keys, tags []string, put map[string]heldPut) (start, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ok = true
	room := func() bool {
		if len(o.keys)+len(o.tags)+len(o.puts) < o.limit {
			return true
		}
		o.dropped.Add(1)
		ok = false
		return false
	}
	for _, k := range keys {
		if _, dup := o.keys[k]; !dup && room() {
			o.keys[k] = struct{}{}
		}
	}
	for _, t := range tags {
		if _, dup := o.tags[t]; !dup && room() {
			o.tags[t] = struct{}{}
		}
	}
	for k, p := range put {
		if cur, dup := o.puts[k]; dup {
			if cur.id.less(p.id) {
				o.puts[k] = p
			}
		} else if room() {
			o.puts[k] = p
		}
	}
	o.held.Store(int64(len(o.keys) + len(o.tags) + len(o.puts)))
	if o.held.Load() > 0 && !o.running {
		o.running = true
		return true, ok
	}
	return false, ok
}

// snapshot returns what the outbox holds now.
func (o *outbox) snapshot() (keys, tags []string, puts map[string]heldPut) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for k := range o.keys {
		keys = append(keys, k)
	}
	for t := range o.tags {
		tags = append(tags, t)
	}
	puts = make(map[string]heldPut, len(o.puts))
	for k, p := range o.puts {
		puts[k] = p
	}
	return keys, tags, puts
}

// done removes what a replay made, and reports whether the outbox is
// empty now; when it is, the replay goroutine stops (running false).
func (o *outbox) done(keys, tags []string, puts map[string]heldPut) (empty bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range keys {
		delete(o.keys, k)
	}
	for _, t := range tags {
		delete(o.tags, t)
	}
	for k, p := range puts {
		if cur, ok := o.puts[k]; ok && cur.id == p.id {
			delete(o.puts, k)
		}
	}
	n := len(o.keys) + len(o.tags) + len(o.puts)
	o.held.Store(int64(n))
	if n > 0 {
		return false
	}
	o.down.Store(false)
	o.running = false
	return true
}

// stopped marks the replay goroutine gone (the cache closes) with entries
// still held.
func (o *outbox) stopped() {
	o.mu.Lock()
	o.running = false
	o.mu.Unlock()
}

// wake asks the replay goroutine to try now.
func (o *outbox) wake() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// hold puts what a write could not make into the outbox, starting the
// replay if none runs, and returns err wrapped for the caller.
func (c *Cache[V]) hold(err error, keys, tags []string, puts map[string]heldPut) error {
	start, ok := c.outbox.add(keys, tags, puts)
	if start && !c.spawn(c.replayLoop) {
		c.outbox.stopped()
	}
	if !ok {
		c.cfg.Logger.Error("tiercache: outbox full: an invalidation that Redis did not get is dropped; other processes may serve the old value until it expires",
			"namespace", c.cfg.Namespace, "held", c.outbox.held.Load(), "keys", keys, "tags", tags)
		return fmt.Errorf("%w (and the outbox is full, so it will not be retried): %w", ErrL2Unavailable, err)
	}
	if errors.Is(err, ErrL2Unavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrL2Unavailable, err)
}

// errRedisDown is what a write meets while the outbox holds invalidations
// and its last replay failed.
var errRedisDown = errors.New("known down: the last replay of the outbox failed")

// change makes a write's L2 change with op, retried with backoff until it
// succeeds or ctx, which WriteTimeout bounds, ends. If it cannot, it calls
// keep (if not nil), and then keys, tags and puts go into the outbox and
// the error wraps ErrL2Unavailable. keep installs the writer's own L1 copy:
// the outbox's replay, which may run as soon as they are in it, ends that
// copy, so it must be there first, or it would outlive the replay.
func (c *Cache[V]) change(ctx context.Context, op func(ctx context.Context) error, keys, tags []string, puts map[string]heldPut, keep func()) error {
	var err error
	if c.outbox.held.Load() > 0 && c.outbox.down.Load() {
		err = errRedisDown
	} else {
		err = c.retry(ctx, op)
	}
	if err != nil {
		c.counters.failedWrites.Add(1)
		if keep != nil {
			keep()
		}
		return c.hold(err, keys, tags, puts)
	}
	if c.outbox.held.Load() > 0 {
		c.outbox.wake() // Redis answers: replay now
	}
	return nil
}

// retry runs op until it succeeds or ctx ends, waiting between attempts
// from 5 ms, doubling to 100 ms; with a negative WriteTimeout, once.
func (c *Cache[V]) retry(ctx context.Context, op func(ctx context.Context) error) error {
	if c.cfg.WriteTimeout < 0 {
		return op(ctx)
	}
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		err := op(ctx)
		if err == nil || !sleep(ctx, wait) {
			return err
		}
		c.counters.writeRetries.Add(1)
	}
}

// writeContext is the context of a write's L2 steps: ctx's values, not its
// cancellation (a write whose caller went away must still finish or be
// held), bounded by WriteTimeout.
func (c *Cache[V]) writeContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.cfg.WriteTimeout < 0 {
		return context.WithCancel(context.WithoutCancel(ctx)) // one attempt, which L2Timeout bounds
	}
	return context.WithTimeout(context.WithoutCancel(ctx), c.cfg.WriteTimeout)
}

// replayLoop replays the outbox until it is empty or the cache closes,
// from 10 ms after a failure, doubling to 200 ms, or at once when a write
// finds Redis answering.
func (c *Cache[V]) replayLoop() {
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		select {
		case <-c.closing.Done():
			c.outbox.stopped()
			return
		default:
		}
		empty, err := c.replay(c.closing)
		if empty {
			c.cfg.Logger.Info("tiercache: outbox replayed; L2 is trusted again", "namespace", c.cfg.Namespace)
			return
		}
		// A replay that went through shows Redis up, even if writes that
		// failed at once meanwhile added entries: they must try Redis
		// again, or under steady writes the outbox would never empty.
		c.outbox.down.Store(err != nil)
		if err == nil {
			wait = 5 * time.Millisecond // what writes added meanwhile goes now
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.outbox.kick:
			wait = 5 * time.Millisecond
		case <-c.closing.Done():
		}
		t.Stop()
	}
}

// replay makes what the outbox holds: the deletes, the write-behind values
// and the tag purges in L2, each followed by its publish, and reports
// whether the outbox is empty after it. It goes a chunk at a time, and
// what a chunk made leaves the outbox at once: a large outbox drains under
// load even if all of it would not fit in one deadline, and a failure
// costs only the chunk in hand. Every L2 step has its own L2Timeout, every
// publish its own WriteTimeout; ctx only stops it.
//
// The L2 part of each chunk runs twice. An attempt that a write gave up on
// (a timeout) may still sit in Redis's socket buffers when Redis comes
// back, and execute after the first pass: an old SET after our DEL. Redis
// runs what its clients have sent in the same event-loop turn, before it
// sends any reply, so the second pass, sent once the first has answered,
// comes after every such attempt.
func (c *Cache[V]) replay(ctx context.Context) (empty bool, err error) {
	c.outbox.replayMu.Lock()
	defer c.outbox.replayMu.Unlock()
	keys, tags, puts := c.outbox.snapshot()
	if len(keys)+len(tags)+len(puts) == 0 {
		return c.outbox.done(nil, nil, nil), nil
	}
	c.outbox.replays.Add(1)
	// step makes one chunk: L2 twice, then this process's own copies (the
	// publisher does not hear its own message, and a copy it kept of a
	// failed write may be older than what a later write left in L2), then
	// the publish, and takes it out of the outbox.
	step := func(l2 func(ctx context.Context) ([]string, error), keys, tags []string, puts map[string]heldPut) error {
		evict := slices.Clone(keys)
		for k := range puts {
			evict = append(evict, k)
		}
		var popped []string // taken from a tag set, by either pass
		for range 2 {
			removed, err := l2(ctx)
			popped = append(popped, removed...)
			if err != nil {
				if len(popped) > 0 {
					// No longer in their tag set: they stay in the outbox
					// as keys, to be published.
					c.outbox.add(popped, nil, nil)
				}
				return err
			}
		}
		evict = append(evict, popped...)
		c.invalidateLocal(evict...)
		c.invalidateLocalTags(tags)
		pctx, cancel := context.WithTimeout(ctx, max(c.cfg.WriteTimeout, c.cfg.L2Timeout))
		defer cancel()
		if err := c.announce(pctx, true, evict, tags); err != nil {
			return err
		}
		c.outbox.done(keys, tags, puts)
		return nil
	}
	for chunk := range slices.Chunk(keys, 500) {
		if err := step(func(ctx context.Context) ([]string, error) {
			return nil, c.l2.must(ctx, func(ctx context.Context) error { return c.l2.delMany(ctx, c.l2Keys(chunk)) })
		}, chunk, nil, nil); err != nil {
			return false, err
		}
	}
	var putKeys []string
	for k := range puts {
		putKeys = append(putKeys, k)
	}
	for chunk := range slices.Chunk(putKeys, 500) {
		part := make(map[string]heldPut, len(chunk))
		for _, k := range chunk {
			part[k] = puts[k]
		}
		if err := step(func(ctx context.Context) ([]string, error) {
			return nil, c.l2.must(ctx, func(ctx context.Context) error { return c.putHeld(ctx, part) })
		}, nil, nil, part); err != nil {
			return false, err
		}
	}
	for _, t := range tags {
		if err := step(func(ctx context.Context) ([]string, error) { return c.purgeTag(ctx, t) }, nil, []string{t}, nil); err != nil {
			return false, err
		}
	}
	return c.outbox.done(nil, nil, nil), nil
}

// putHeld writes the held write-behind values, each unless L2 has a newer
// write of its key (wbPut compares entry IDs).
func (c *Cache[V]) putHeld(ctx context.Context, puts map[string]heldPut) error {
	_, err := c.l2.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for k, h := range puts {
			wbPut.Eval(ctx, p, []string{c.l2Key(k)}, h.b, h.id.ms, h.id.seq, 0, "put")
		}
		return nil
	})
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	return err
}

// closeOutbox is Close's last replay, bounded by WriteTimeout. It returns
// an error if invalidations are left: they are lost with this process.
func (c *Cache[V]) closeOutbox() error {
	if c.outbox.held.Load() == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(c.cfg.WriteTimeout, c.cfg.L2Timeout))
	defer cancel()
	if empty, _ := c.replay(ctx); empty {
		return nil
	}
	n := c.outbox.held.Load()
	c.cfg.Logger.Error("tiercache: closed with invalidations Redis never got; other processes may serve the old values until they expire",
		"namespace", c.cfg.Namespace, "held", n)
	return fmt.Errorf("%w: closed with %d invalidations not made", ErrL2Unavailable, n)
}
