// Package outbox holds the L2 invalidations a write could not make, and
// replays them once Redis answers:
//
//	o := outbox.New()
//	if start, _ := o.Add(keys, nil, nil); start {
//		go o.Loop(ctx, target)
//	}
//
// While it holds any, Held is nonzero, and the cache reads nothing from L2
// (l2.Config.Held).
package outbox

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/internal/l2"
)

// Target is what a replay makes its changes in: the cache.
type Target interface {
	// Delete deletes keys from L2, once, within one L2 timeout.
	Delete(ctx context.Context, keys []string) error
	// Put writes held write-behind values, once, within one L2 timeout.
	Put(ctx context.Context, puts map[string]l2.HeldWrite) error
	// PurgeTag empties a tag set and returns the keys it listed.
	PurgeTag(ctx context.Context, tag string) ([]string, error)
	// Evict drops keys and tags from this process's L1.
	Evict(keys, tags []string)
	// Announce publishes the invalidation of keys and tags, within a bound
	// of its own.
	Announce(ctx context.Context, keys, tags []string) error
	// Replayed hears that the outbox is empty.
	Replayed()
}

// An Outbox keeps the L2 invalidations that a write could not make within
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
type Outbox struct {
	mu      sync.Mutex // guards keys, tags, puts and running
	keys    map[string]struct{}
	tags    map[string]struct{}
	puts    map[string]l2.HeldWrite // write-behind values, by key: the newest
	running bool                    // a replay goroutine runs

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

// Held counts the entries held (nonzero: L2 is not trusted); l2.Config.Held
// reads it.
func (o *Outbox) Held() *atomic.Int64 { return &o.held }

// Down reports that the last replay failed: Redis is down for writes.
func (o *Outbox) Down() bool { return o.down.Load() }

// Dropped counts entries dropped because the outbox was full, and Replays
// the replays begun.
func (o *Outbox) Dropped() int64 { return o.dropped.Load() }
func (o *Outbox) Replays() int64 { return o.replays.Load() }

// SetLimit changes how many entries the outbox holds at most.
func (o *Outbox) SetLimit(n int) {
	o.mu.Lock()
	o.limit = n
	o.mu.Unlock()
}

// New returns an empty outbox.
func New() *Outbox {
	return &Outbox{
		keys: make(map[string]struct{}), tags: make(map[string]struct{}), puts: make(map[string]l2.HeldWrite),
		kick: make(chan struct{}, 1), limit: outboxLimit,
	}
}

// Add holds keys to delete, tags to purge and a write-behind value to put
// (nil: none), and reports whether it had room for them all. It returns
// whether a replay goroutine must be started.
func (o *Outbox) Add(keys, tags []string, put map[string]l2.HeldWrite) (start, ok bool) {
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
			if cur.ID.Less(p.ID) {
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
func (o *Outbox) snapshot() (keys, tags []string, puts map[string]l2.HeldWrite) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for k := range o.keys {
		keys = append(keys, k)
	}
	for t := range o.tags {
		tags = append(tags, t)
	}
	puts = make(map[string]l2.HeldWrite, len(o.puts))
	for k, p := range o.puts {
		puts[k] = p
	}
	return keys, tags, puts
}

// done removes what a replay made, and reports whether the outbox is
// empty now; when it is, the replay goroutine stops (running false).
func (o *Outbox) done(keys, tags []string, puts map[string]l2.HeldWrite) (empty bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range keys {
		delete(o.keys, k)
	}
	for _, t := range tags {
		delete(o.tags, t)
	}
	for k, p := range puts {
		if cur, ok := o.puts[k]; ok && cur.ID == p.ID {
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

// Stopped marks the replay goroutine gone (the cache closes) with entries
// still held.
func (o *Outbox) Stopped() {
	o.mu.Lock()
	o.running = false
	o.mu.Unlock()
}

// Wake asks the replay goroutine to try now.
func (o *Outbox) Wake() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// Loop replays the outbox until it is empty or ctx ends,
// from 10 ms after a failure, doubling to 200 ms, or at once when a write
// finds Redis answering.
func (o *Outbox) Loop(ctx context.Context, t Target) {
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		select {
		case <-ctx.Done():
			o.Stopped()
			return
		default:
		}
		empty, err := o.Replay(ctx, t)
		if empty {
			t.Replayed()
			return
		}
		// A replay that went through shows Redis up, even if writes that
		// failed at once meanwhile added entries: they must try Redis
		// again, or under steady writes the outbox would never empty.
		o.down.Store(err != nil)
		if err == nil {
			wait = 5 * time.Millisecond // what writes added meanwhile goes now
		}
		tm := time.NewTimer(wait)
		select {
		case <-tm.C:
		case <-o.kick:
			wait = 5 * time.Millisecond
		case <-ctx.Done():
		}
		tm.Stop()
	}
}

// Replay makes what the outbox holds: the deletes, the write-behind values
// and the tag purges in L2, each followed by its publish, and reports
// whether the outbox is empty after it. It goes a chunk at a time, and
// what a chunk made leaves the outbox at once: a large outbox drains under
// load even if all of it would not fit in one deadline, and a failure
// costs only the chunk in hand. Every L2 step has its own L2Timeout, every
// publish its own bound (see Target); ctx only stops it.
//
// The L2 part of each chunk runs twice. An attempt that a write gave up on
// (a timeout) may still sit in Redis's socket buffers when Redis comes
// back, and execute after the first pass: an old SET after our DEL. Redis
// runs what its clients have sent in the same event-loop turn, before it
// sends any reply, so the second pass, sent once the first has answered,
// comes after every such attempt.
func (o *Outbox) Replay(ctx context.Context, t Target) (empty bool, err error) {
	o.replayMu.Lock()
	defer o.replayMu.Unlock()
	keys, tags, puts := o.snapshot()
	if len(keys)+len(tags)+len(puts) == 0 {
		return o.done(nil, nil, nil), nil
	}
	o.replays.Add(1)
	// step makes one chunk: L2 twice, then this process's own copies (the
	// publisher does not hear its own message, and a copy it kept of a
	// failed write may be older than what a later write left in L2), then
	// the publish, and takes it out of the outbox.
	step := func(apply func(ctx context.Context) ([]string, error), keys, tags []string, puts map[string]l2.HeldWrite) error {
		evict := slices.Clone(keys)
		for k := range puts {
			evict = append(evict, k)
		}
		var popped []string // taken from a tag set, by either pass
		for range 2 {
			removed, err := apply(ctx)
			popped = append(popped, removed...)
			if err != nil {
				if len(popped) > 0 {
					// No longer in their tag set: they stay in the outbox
					// as keys, to be published.
					o.Add(popped, nil, nil)
				}
				return err
			}
		}
		evict = append(evict, popped...)
		t.Evict(evict, tags)
		if err := t.Announce(ctx, evict, tags); err != nil {
			return err
		}
		o.done(keys, tags, puts)
		return nil
	}
	for chunk := range slices.Chunk(keys, 500) {
		if err := step(func(ctx context.Context) ([]string, error) {
			return nil, t.Delete(ctx, chunk)
		}, chunk, nil, nil); err != nil {
			return false, err
		}
	}
	var putKeys []string
	for k := range puts {
		putKeys = append(putKeys, k)
	}
	for chunk := range slices.Chunk(putKeys, 500) {
		part := make(map[string]l2.HeldWrite, len(chunk))
		for _, k := range chunk {
			part[k] = puts[k]
		}
		if err := step(func(ctx context.Context) ([]string, error) {
			return nil, t.Put(ctx, part)
		}, nil, nil, part); err != nil {
			return false, err
		}
	}
	for _, tag := range tags {
		if err := step(func(ctx context.Context) ([]string, error) { return t.PurgeTag(ctx, tag) }, nil, []string{tag}, nil); err != nil {
			return false, err
		}
	}
	return o.done(nil, nil, nil), nil
}
