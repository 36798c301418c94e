package tiered

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tiercache/tiercache/internal/l1"
	"github.com/tiercache/tiercache/internal/l2"
	"github.com/tiercache/tiercache/internal/writebehind"
)

// Write-behind keeps each write in a Redis stream until the source has it:
// Set is here, where the cache's write protocol is; the queue and its
// flushers are package internal/writebehind, whose doc tells how the shards,
// locks and acknowledgements keep every acknowledged write and apply a
// key's writes in order.

type (
	// WriteBehindConfig configures a WriteBehind.
	WriteBehindConfig[V any] = writebehind.Config[V]
	// PendingWrite is one write handed to a FlushFunc.
	PendingWrite[V any] = writebehind.PendingWrite[V]
	// FlushFunc writes a batch of writes to the source.
	FlushFunc[V any] = writebehind.FlushFunc[V]
	// WriteBehindStats is a snapshot of a WriteBehind's counters.
	WriteBehindStats = writebehind.Stats
)

// ErrNotQueued reports a WriteBehind.Set that Redis did not acknowledge:
// the write is not queued for the source, and the cache is unchanged.
var ErrNotQueued = errors.New("tiered: write-behind write not queued")

// Errors of the write-behind queue.
var (
	ErrNotReplicated = writebehind.ErrNotReplicated
	ErrShardsChanged = writebehind.ErrShardsChanged
	ErrNotFlushed    = writebehind.ErrNotFlushed
)

// WriteBehind is the write-behind strategy over a Cache: Set acknowledges
// a write once Redis holds it, and flushers in any process apply it to the
// source later, in batches. See NewWriteBehind.
type WriteBehind[V any] struct {
	c *Cache[V]
	q *writebehind.Queue[V]
}

// NewWriteBehind returns the write-behind strategy over c, which must have
// Config.Redis: the writes wait in Redis streams of c's namespace. Unless
// cfg.NoFlusher, it starts flushers at once; Close stops them.
//
// A write is durable once Set returns as far as Redis is: with appendonly
// yes and appendfsync always, a Redis crash loses no acknowledged write;
// with appendfsync everysec (the default), the last second's. The pending
// value has no TTL, so that a volatile-* maxmemory-policy (or noeviction)
// never evicts it; an allkeys-* policy may, and a reader then loads the
// source's older value until the flush. See docs/architecture.md.
func NewWriteBehind[V any](c *Cache[V], cfg WriteBehindConfig[V]) (*WriteBehind[V], error) {
	return newWriteBehind(c, cfg, nil)
}

// newWriteBehind is NewWriteBehind with the shard locks locks (nil: Redis's).
func newWriteBehind[V any](c *Cache[V], cfg WriteBehindConfig[V], locks writebehind.Locks) (*WriteBehind[V], error) {
	if c == nil || c.l2 == nil || c.l2.Redis() == nil {
		return nil, errors.New("tiered: write-behind needs a Cache with Config.Redis")
	}
	if c.isClosed() {
		return nil, ErrClosed
	}
	mp := c.cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	q, err := writebehind.New(writebehind.Host{
		Namespace: c.cfg.Namespace,
		Redis:     c.l2.Redis(),
		Timeout:   c.cfg.L2Timeout,
		TTL:       c.cfg.TTL,
		CodecID:   c.cfg.Codec.ID(),
		Unmarshal: c.cfg.Codec.Unmarshal,
		Logger:    c.cfg.Logger,
		Tracer:    c.tracer,
		Meter:     mp.Meter(instrumentationName),
		Evict:     c.evictEverywhere,
		Clock:     c.cfg.Clock,
		Locks:     locks,
	}, cfg)
	if err != nil {
		return nil, err
	}
	return &WriteBehind[V]{c: c, q: q}, nil
}

// evictEverywhere drops key from every process's L1.
func (c *Cache[V]) evictEverywhere(ctx context.Context, key string) {
	if !c.isClosed() {
		c.invalidateLocal(key)
		_ = c.announce(ctx, true, []string{key}, nil)
	}
}

// Set acknowledges a write of v under key once Redis holds it in the
// write-behind stream; a flusher writes it to the source later. The cache
// holds v from then on: in L2, with no expiry until it is flushed, and in
// this process's L1, and every other process's L1 copy is invalidated.
// WithTTL and WithStale apply from the flush on; WithTags is refused (a
// tag purge would drop the pending value, and readers would load the
// source's older one).
//
// Its Redis steps run to the end even if ctx is done, retried for up to
// Config.WriteTimeout. A nil error means all of the above happened. An
// error for which errors.Is(err, ErrNotQueued) holds means the write was
// not acknowledged and the cache is unchanged (as with any database call,
// a timeout may hide an append that Redis did make, which is then
// flushed). Any other error means the write is acknowledged and will reach
// the source, but L2 or the other processes' L1s could not be updated:
// they may serve the older value until Redis answers again, when this
// process's outbox puts v into L2. Both wrap ErrL2Unavailable.
func (w *WriteBehind[V]) Set(ctx context.Context, key string, v V, opts ...Option) (err error) {
	c := w.c
	if err := c.checkKey(key); err != nil {
		return err
	}
	o, err := c.options(opts)
	if err != nil {
		return err
	}
	if len(o.tags) > 0 {
		return errors.New("tiered: write-behind does not take WithTags")
	}
	if w.q.Closed() || c.isClosed() {
		return ErrClosed
	}
	ctx, span := c.tracer.Start(ctx, "tiered.WriteBehind.Set", trace.WithAttributes(attribute.String("tiercache.namespace", c.cfg.Namespace)))
	defer endSpan(span, &err)

	payload, err := c.marshal(key, v)
	if err != nil {
		return err
	}
	ttl := c.jitter(o.ttl)
	keep := ttl + max(o.staleTTL, o.maxStale)
	wctx, cancel := c.writeContext(ctx)
	defer cancel()
	var sid string
	// Retried like a write's other steps: a retry after a lost reply (or
	// too few replicas) appends the same value twice, which the flush
	// applies once.
	err = c.retry(wctx, func(ctx context.Context) (err error) {
		sid, err = w.q.Append(ctx, key, payload, ttl, keep)
		return err
	})
	if err != nil {
		c.l2Failed(ctx, "write-behind append", key, err)
		c.counters.failedWrites.Add(1)
		return fmt.Errorf("%w: %q: %w: %w", ErrNotQueued, key, ErrL2Unavailable, err)
	}
	w.q.Appended()
	id, err := l2.ParseEntryID(sid)
	if err != nil {
		c.l1.Delete(key)
		return nil // acknowledged; Redis made the ID, so this cannot be, but the flush settles L2 anyway
	}
	b := l2.AppendWriteEnvelope(make([]byte, 0, l2.HeaderSize+l2.WriteIDExt+len(payload)), c.cfg.Codec.ID(), id, time.Time{}, time.Time{}, payload)
	wrote := true
	l2key := c.l2Key(key)
	// On a failure too, v goes into L1: it is the newest write this
	// process knows of, and the outbox puts it into L2 once Redis answers.
	install := func() {
		c.fence.invalidate(key)
		c.l1.Set(key, &entry[V]{Value: item[V]{v: v, filled: c.clock.Exact()}, Cost: l1.EntryCost(key, len(b))}, c.l1TTL(0))
	}
	l2err := c.change(wctx, func(ctx context.Context) error {
		return c.l2.Must(ctx, func(ctx context.Context) error {
			n, err := l2.WBPut.Run(ctx, c.l2.Redis(), []string{l2key}, b, id.MS, id.Seq, 0, "put").Int()
			wrote = n == 1
			return err
		})
	}, nil, nil, map[string]l2.HeldWrite{key: {Envelope: b, ID: id}}, install)
	switch {
	case l2err != nil: // kept
	case !wrote:
		// L2 holds a newer write (a concurrent Set), or this one already
		// (a retry after a lost reply): this process must read it there.
		c.fence.invalidate(key)
		c.l1.Delete(key)
	default:
		install()
	}
	if l2err != nil {
		c.l2Failed(ctx, "write-behind set", key, l2err)
	}
	if err := errors.Join(l2err, c.announce(wctx, l2err == nil, []string{key}, nil)); err != nil {
		return fmt.Errorf("tiered: write-behind %q acknowledged (the source will get it), but other processes may read the older value until Redis answers: %w", key, err)
	}
	return nil
}

// Close stops accepting writes and lets this process's flushers empty
// their shards until ctx ends; what is left stays in the streams for
// another process (or the next start) to flush. It returns an error if
// writes this process was handed are left unflushed (ctx ended, or Redis
// or the source failed): they are flushed by the next owner of their
// shard, within LockTTL. Close the WriteBehind before its Cache.
func (w *WriteBehind[V]) Close(ctx context.Context) error { return w.q.Close(ctx) }

// Stats returns a snapshot of w's counters.
func (w *WriteBehind[V]) Stats() WriteBehindStats { return w.q.Stats() }
