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

// Set is here, with the cache's write protocol; the queue and why it loses
// no acknowledged write are in internal/writebehind.

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
// the write is not queued, and the cache is unchanged.
var ErrNotQueued = errors.New("tiered: write-behind write not queued")

// Errors of the write-behind queue (see package internal/writebehind).
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

// NewWriteBehind returns the write-behind strategy over c, whose writes wait
// in Redis streams of c's namespace; it fails unless c is open and has
// Config.Redis. Unless cfg.NoFlusher, it starts flushers; Close stops them.
//
// An acknowledged write is as durable as Redis makes it (appendonly with
// appendfsync always: a crash loses none; everysec: the last second's).
// The pending value has no TTL, so only an allkeys-* maxmemory-policy can
// evict it (docs/architecture.md).
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
// write-behind stream, for a flusher to write to the source. L2 then holds
// v, unexpiring until the flush, and so does this process's L1; the other
// processes' copies are invalidated. WithTTL and WithStale apply from the
// flush on; WithTags is refused (a tag purge would drop the pending value).
//
// Its Redis steps finish even if ctx is done, retried for up to
// Config.WriteTimeout. errors.Is(err, ErrNotQueued) means the write was not
// acknowledged and the cache is unchanged (a timeout may still hide an
// append, which is then flushed). Any other error means the write will
// reach the source, but other processes may serve the older value until
// this process's outbox puts v into L2. Both wrap ErrL2Unavailable.
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
	// A retried append (lost reply, too few replicas) is flushed once.
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
		return nil // cannot be (Redis made the ID); the write is acknowledged, and the flush settles L2
	}
	b := l2.AppendWriteEnvelope(make([]byte, 0, l2.HeaderSize+l2.WriteIDExt+len(payload)), c.cfg.Codec.ID(), id, time.Time{}, time.Time{}, payload)
	wrote := true
	l2key := c.l2Key(key)
	// Also on a failure: v is the newest write here; the outbox puts it in L2.
	install := func() {
		c.fence.Invalidate(key)
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
		// L2 holds a newer write, or this one (a retried append): read it there.
		c.fence.Invalidate(key)
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
// their shards until ctx ends; it returns an error if writes they were
// handed are left, which the next owner of the shard flushes within
// LockTTL. Close the WriteBehind before its Cache.
func (w *WriteBehind[V]) Close(ctx context.Context) error { return w.q.Close(ctx) }

// Stats returns a snapshot of w's counters.
func (w *WriteBehind[V]) Stats() WriteBehindStats { return w.q.Stats() }
