package writebehind

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/l2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// wbItem is one key of a batch: its latest write, which supersedes the
// others.
type wbItem[V any] struct {
	msgs   []*wbMsg // in ID order; the last is the one written
	value  V
	failed error
	// call is the number of the last Flush call that held the item, and
	// okBefore the value of WriteBehind.okStart when that call began.
	call, okBefore int64
	unsettled      bool // flushed, but its L2 value could not be settled
}

func (it *wbItem[V]) latest() *wbMsg { return it.msgs[len(it.msgs)-1] }

// msgsOf returns the writes of items, in ID order.
func msgsOf[V any](items []*wbItem[V]) []*wbMsg {
	var ms []*wbMsg
	for _, it := range items {
		ms = append(ms, it.msgs...)
	}
	sortMsgs(ms)
	return ms
}

// flushHeld writes held (in ID order) to the source and returns what is
// left of it, in ID order: the writes of the keys that failed. An error
// means a Redis failure past a Flush, or a lost lock: the caller must
// give the shard up.
func (w *Queue[V]) flushHeld(ctx context.Context, shard int, held []*wbMsg) ([]*wbMsg, error) {
	batch, err := w.decodeHeld(ctx, shard, held)
	if err != nil {
		return held, err
	}
	if len(batch) == 0 {
		return nil, nil
	}
	err = w.write(ctx, shard, batch)
	switch {
	case err == nil:
		unsettled, err := w.done(ctx, shard, batch)
		if err != nil {
			return held, err
		}
		return msgsOf(unsettled), nil
	case errors.Is(err, errLockLost):
		return held, err
	case len(batch) == 1:
		batch[0].failed = err
	default:
		if err := w.writeEach(ctx, shard, batch); err != nil {
			return held, err
		}
	}
	left, err := w.settle(ctx, shard, batch)
	if err != nil {
		return held, err
	}
	return left, nil
}

// decodeHeld groups the held messages by key and decodes each key's latest
// value; what cannot be decoded goes to the dead letters at once.
func (w *Queue[V]) decodeHeld(ctx context.Context, shard int, held []*wbMsg) ([]*wbItem[V], error) {
	var items []*wbItem[V]
	byKey := make(map[string]*wbItem[V], len(held))
	for _, m := range held {
		if m.bad != nil {
			if err := w.deadLetter(ctx, shard, &wbItem[V]{msgs: []*wbMsg{m}, failed: m.bad}); err != nil {
				return nil, err
			}
			continue
		}
		it := byKey[m.key]
		if it == nil {
			it = &wbItem[V]{}
			byKey[m.key] = it
			items = append(items, it)
		}
		it.msgs = append(it.msgs, m)
	}
	batch := items[:0]
	for _, it := range items {
		if err := w.host.Unmarshal([]byte(it.latest().payload), &it.value); err != nil {
			it.failed = fmt.Errorf("decode: %w", err)
			if err := w.deadLetter(ctx, shard, it); err != nil {
				return nil, err
			}
			continue
		}
		batch = append(batch, it)
	}
	return batch, nil
}

// writeEach writes a failed batch again key by key, so that one poison
// write does not hold back the rest.
func (w *Queue[V]) writeEach(ctx context.Context, shard int, batch []*wbItem[V]) error {
	for _, it := range batch {
		if ctx.Err() != nil {
			it.failed = ctx.Err()
			continue
		}
		err := w.write(ctx, shard, []*wbItem[V]{it})
		if errors.Is(err, errLockLost) {
			return err
		}
		if it.failed = err; err == nil {
			unsettled, err := w.done(ctx, shard, []*wbItem[V]{it})
			if err != nil {
				return err
			}
			it.unsettled = len(unsettled) > 0
		}
	}
	return nil
}

// settle counts the batch's failures and returns what is left to flush,
// dead-lettering the writes out of attempts.
func (w *Queue[V]) settle(ctx context.Context, shard int, batch []*wbItem[V]) ([]*wbMsg, error) {
	var left []*wbMsg
	for _, it := range batch {
		if it.unsettled {
			left = append(left, it.msgs...)
		}
		if it.failed == nil {
			continue
		}
		m := it.latest()
		m.failures++
		// The failure counts if the source accepted a call that started
		// after this write's last failure began and before this attempt
		// began: then the source worked, and refused this write. Calls
		// in flight across the start or the end of an outage do not count.
		if m.attempts == 0 || it.okBefore > m.lastFail {
			m.attempts++
		}
		m.lastFail = it.call
		if m.attempts >= w.cfg.MaxAttempts && ctx.Err() == nil {
			if err := w.deadLetter(ctx, shard, it); err != nil {
				return nil, err
			}
			continue
		}
		left = append(left, it.msgs...)
	}
	sortMsgs(left)
	return left, nil
}

// write renews the shard's lock, then calls Flush for items, bounded by
// FlushTimeout, a panic turned into an error. The lock outlives the call
// (LockTTL is more than twice FlushTimeout), so no other process can take
// the shard while a Flush that honours its context runs.
func (w *Queue[V]) write(ctx context.Context, shard int, items []*wbItem[V]) (err error) {
	if err := w.renew(ctx, shard); err != nil {
		return errors.Join(errLockLost, err)
	}
	call, okBefore := w.calls.Add(1), w.okStart.Load()
	defer func() {
		for err == nil {
			if cur := w.okStart.Load(); cur >= call || w.okStart.CompareAndSwap(cur, call) {
				break
			}
		}
	}()
	writes := make([]PendingWrite[V], len(items))
	for i, it := range items {
		it.call, it.okBefore = call, okBefore
		m := it.latest()
		writes[i] = PendingWrite[V]{Key: m.key, Value: it.value, ID: m.sid}
		if m.failures > 0 {
			w.stats.retried.Add(1)
		}
	}
	ctx, span := w.host.Tracer.Start(ctx, "tiered.WriteBehind.flush", trace.WithAttributes(
		attribute.String("tiercache.namespace", w.host.Namespace), attribute.Int("tiercache.keys", len(items))))
	defer endSpan(span, &err)
	ctx, cancel := context.WithTimeout(ctx, w.cfg.FlushTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("tiered: write-behind Flush panicked: %v", r)
		}
		if err != nil {
			w.stats.failures.Add(1)
			w.logFails.Do(func() {
				w.host.Logger.WarnContext(ctx, "tiercache: write-behind flush failed; retrying",
					"namespace", w.host.Namespace, "writes", len(writes), "err", err)
			})
		}
	}()
	return w.cfg.Flush(ctx, writes)
}

// done settles the flushed items' L2 values (their TTL from now on) and
// acks and deletes the entries of those it settled. It returns the items
// it could not settle, which stay pending in the shard and held by the
// caller, to be flushed again (delivery is at least once) and settled:
// on a cluster, a dead master fails only the keys it serves, and the
// others go on. If the ack fails, the shard's own node is failing, and
// the caller gives the shard up.
func (w *Queue[V]) done(ctx context.Context, shard int, items []*wbItem[V]) ([]*wbItem[V], error) {
	now := w.now()
	rctx, cancel := w.bound(context.WithoutCancel(ctx))
	defer cancel()
	settles := make([]*redis.Cmd, len(items))
	_, _ = w.rdb.Pipelined(rctx, func(p redis.Pipeliner) error {
		for i, it := range items {
			m := it.latest()
			b := l2.AppendWriteEnvelope(nil, w.host.CodecID, m.id, now.Add(m.ttl), now.Add(m.keep), []byte(m.payload))
			settles[i] = l2.WBPut.Eval(rctx, p, []string{l2.Key(w.host.Namespace, m.key)}, b, m.id.MS, m.id.Seq, max(m.keep.Milliseconds(), 1), "settle")
		}
		return nil
	})
	var ids []string
	var left []*wbItem[V]
	var first error
	for i, it := range items {
		if err := settles[i].Err(); err != nil && !errors.Is(err, redis.Nil) {
			first = cmp.Or(first, err)
			left = append(left, it)
			continue
		}
		for _, m := range it.msgs {
			ids = append(ids, m.sid)
		}
	}
	if len(left) > 0 {
		w.stats.unsettled.Add(int64(len(left)))
		w.logFails.Do(func() {
			w.host.Logger.WarnContext(ctx, "tiercache: write-behind could not settle flushed values in L2; they are flushed again",
				"namespace", w.host.Namespace, "shard", shard, "keys", len(left), "err", first)
		})
	}
	if len(ids) > 0 {
		if err := w.ack(rctx, shard, ids); err != nil {
			return left, err
		}
	}
	w.stats.flushed.Add(int64(len(ids)))
	return left, nil
}

// ack acknowledges and deletes entries if this process still holds the
// shard.
func (w *Queue[V]) ack(ctx context.Context, shard int, ids []string) error {
	me := w.locks.Owner()
	args := make([]any, 0, 2+len(ids))
	args = append(args, me, w.group)
	for _, id := range ids {
		args = append(args, id)
	}
	n, err := l2.WBAck.Run(ctx, w.rdb, []string{w.streamKey(shard), l2.LockKey(w.streamKey(shard))}, args...).Int()
	switch {
	case err != nil:
		return fmt.Errorf("ack: %w", err)
	case n < 0:
		return errLockLost
	}
	return nil
}

// deadLetter moves an item's writes to the dead-letter stream and takes
// its value out of the cache, whose readers then load what the source
// has: it leaves an expired envelope with the write's ID, which a late
// Set of the same write cannot overwrite and a reader treats as a miss.
func (w *Queue[V]) deadLetter(ctx context.Context, shard int, it *wbItem[V]) error {
	rctx, cancel := w.bound(context.WithoutCancel(ctx))
	defer cancel()
	m := it.latest()
	if m.key != "" {
		gone := l2.AppendWriteEnvelope(nil, w.host.CodecID, m.id, time.UnixMilli(1), time.UnixMilli(1), nil)
		n, err := l2.WBPut.Run(rctx, w.rdb, []string{l2.Key(w.host.Namespace, m.key)}, gone, m.id.MS, m.id.Seq, max(w.host.TTL.Milliseconds(), 1), "drop").Int()
		if err != nil {
			return fmt.Errorf("drop the dead letter's value: %w", err)
		}
		if n == 1 {
			w.host.Evict(rctx, m.key)
		}
	}
	ids := make([]string, 0, len(it.msgs))
	for _, m := range it.msgs {
		// Idempotent by the original ID: a replay after a failed ack adds
		// the same entry again, which the reader of the dead letters can
		// tell from its "id" field.
		err := w.rdb.XAdd(rctx, &redis.XAddArgs{Stream: w.deadKey(), Values: []any{
			"id", m.sid, "shard", shard, "k", m.key, "v", m.payload, "ttl", m.ttl.Milliseconds(),
			"keep", m.keep.Milliseconds(), "attempts", m.attempts, "err", fmt.Sprint(it.failed),
		}}).Err()
		if err != nil {
			return fmt.Errorf("dead-letter: %w", err)
		}
		ids = append(ids, m.sid)
	}
	w.host.Logger.ErrorContext(ctx, "tiercache: write-behind write moved to the dead-letter stream",
		"namespace", w.host.Namespace, "key", m.key, "id", m.sid, "attempts", m.attempts, "stream", w.deadKey(), "err", it.failed)
	if err := w.ack(rctx, shard, ids); err != nil {
		return err
	}
	w.stats.dead.Add(int64(len(ids)))
	return nil
}

func (w *Queue[V]) instruments(meter metric.Meter) (metric.Registration, error) {
	ns := metric.WithAttributes(attribute.String("namespace", w.host.Namespace))
	writes, err := meter.Int64ObservableCounter("tiercache.writebehind.writes",
		metric.WithDescription("Write-behind writes by result: appended (acknowledged), flushed (to the source), retried, dead_lettered, reread (found pending on this process after a read whose reply was lost), unreplicated (an append too few replicas confirmed, retried), unsettled (flushed, L2 not updated, flushed again)."))
	if err != nil {
		return nil, err
	}
	failures, err := meter.Int64ObservableCounter("tiercache.writebehind.flush_errors", metric.WithDescription("Failed write-behind Flush calls."))
	if err != nil {
		return nil, err
	}
	queue, err := meter.Int64ObservableGauge("tiercache.writebehind.queue_length",
		metric.WithDescription("Writes waiting for the source, cluster-wide."))
	if err != nil {
		return nil, err
	}
	lag, err := meter.Float64ObservableGauge("tiercache.writebehind.lag", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest write waiting for the source."))
	if err != nil {
		return nil, err
	}
	result := func(r string) metric.ObserveOption {
		return metric.WithAttributes(attribute.String("namespace", w.host.Namespace), attribute.String("result", r))
	}
	appended, flushed, retried, dead := result("appended"), result("flushed"), result("retried"), result("dead_lettered")
	reread, unreplicated, unsettled := result("reread"), result("unreplicated"), result("unsettled")
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := w.Stats()
		o.ObserveInt64(writes, s.Appended, appended)
		o.ObserveInt64(writes, s.Flushed, flushed)
		o.ObserveInt64(writes, s.Retried, retried)
		o.ObserveInt64(writes, s.DeadLettered, dead)
		o.ObserveInt64(writes, s.Reread, reread)
		o.ObserveInt64(writes, s.Unreplicated, unreplicated)
		o.ObserveInt64(writes, s.Unsettled, unsettled)
		o.ObserveInt64(failures, s.FlushErrors, ns)
		o.ObserveInt64(queue, s.QueueLength, ns)
		o.ObserveFloat64(lag, s.Lag.Seconds(), ns)
		return nil
	}, writes, failures, queue, lag)
}

func sortMsgs(ms []*wbMsg) {
	slices.SortFunc(ms, func(a, b *wbMsg) int {
		switch {
		case a.id.Less(b.id):
			return -1
		case b.id.Less(a.id):
			return 1
		}
		return 0
	})
}

// sleep waits d, or until ctx is done; it reports whether it waited d.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func endSpan(span trace.Span, err *error) {
	if *err != nil {
		span.RecordError(*err)
		span.SetStatus(codes.Error, (*err).Error())
	}
	span.End()
}
