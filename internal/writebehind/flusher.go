package writebehind

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/l2"
)

// manage takes the shards no process holds and samples the queue, until
// Close; then it waits for its flushers.
func (w *Queue[V]) manage() {
	defer w.mgr.Done()
	sample := min(max(20*w.cfg.PollInterval, 100*time.Millisecond), time.Second)
	tick := time.NewTicker(min(sample, w.cfg.LockTTL/3))
	defer tick.Stop()
	for {
		w.sample()
		w.takeShards()
		select {
		case <-tick.C:
		case <-w.draining:
			// Once more, for shards given up on an error since the last
			// tick: their flushers drain them too. And again once every
			// flusher has ended: one that was giving its shard up during
			// the first pass still marked it as ours, and the first pass
			// skipped it.
			for range 2 {
				w.takeShards()
				w.workers.Wait()
			}
			w.sample()
			return
		}
	}
}

// takeShards starts a flusher for every shard whose lock this process gets.
func (w *Queue[V]) takeShards() {
	if w.cfg.NoFlusher {
		return
	}
	for s := range w.owned {
		if !w.owned[s].Load() && w.acquire(s) {
			w.owned[s].Store(true)
			w.workers.Add(1)
			go w.work(s)
		}
	}
}

// sample reads the queue length and the oldest entry of every shard.
func (w *Queue[V]) sample() {
	ctx, cancel := w.bound(w.ctx)
	defer cancel()
	lens := make([]*redis.IntCmd, w.cfg.Shards)
	firsts := make([]*redis.XMessageSliceCmd, w.cfg.Shards)
	_, err := w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for s := range lens {
			lens[s] = p.XLen(ctx, w.streamKey(s))
			firsts[s] = p.XRangeN(ctx, w.streamKey(s), "-", "+", 1)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return // keep the last sample; the failure shows in the L2 errors
	}
	var n int64
	oldest := uint64(0)
	for s := range lens {
		n += lens[s].Val()
		if m := firsts[s].Val(); len(m) > 0 {
			if id, err := l2.ParseEntryID(m[0].ID); err == nil && (oldest == 0 || id.MS < oldest) {
				oldest = id.MS
			}
		}
	}
	w.stats.queue.Store(n)
	var lag int64
	if oldest != 0 {
		lag = max(time.Now().UnixMilli()-int64(oldest), 0)
	}
	w.stats.lagMs.Store(lag)
}

// acquire takes shard's lock if no process holds it, or takes it back if
// this one still does (after a worker stopped on an error).
func (w *Queue[V]) acquire(shard int) bool {
	ctx, cancel := w.bound(w.ctx)
	defer cancel()
	return w.locks.Acquire(ctx, w.streamKey(shard))
}

// renew extends the shard's lock; errLockLost if this process no longer
// holds it.
func (w *Queue[V]) renew(ctx context.Context, shard int) error {
	ctx, cancel := w.bound(ctx)
	defer cancel()
	return w.locks.Renew(ctx, w.streamKey(shard))
}

// wbMsg is one write read from a shard.
type wbMsg struct {
	id        l2.EntryID
	sid       string
	key       string
	payload   string
	ttl, keep time.Duration
	bad       error // the entry could not be parsed: it goes to the dead letters
	failures  int   // failed Flush calls that held it
	attempts  int   // failures counted against MaxAttempts
	lastFail  int64 // the number of the last Flush call that failed with it
}

// work flushes one shard while this process holds its lock, and stops at
// the first Redis failure past a Flush (see the top of this file).
func (w *Queue[V]) work(shard int) {
	defer w.workers.Done()
	ctx := w.ctx
	log := w.host.Logger.With("namespace", w.host.Namespace, "shard", shard, "consumer", w.cfg.Consumer)
	defer func() {
		rctx, cancel := w.bound(context.Background())
		// Released only if still ours, so that another process takes the
		// shard over at once instead of after LockTTL; and before the shard
		// is marked free here, or this process's next flusher for it could
		// take the lock back and then see this release delete it.
		w.locks.Release(rctx, w.streamKey(shard))
		cancel()
		w.owned[shard].Store(false)
	}()
	held, err := w.takeOver(ctx, shard)
	if err != nil {
		w.logFails.Do(func() { log.WarnContext(ctx, "tiercache: write-behind shard take-over failed", "err", err) })
		return
	}
	var drainAt uint64 // Unix ms when Close began; entries after it are left to others
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		if err := w.renew(ctx, shard); err != nil {
			log.InfoContext(ctx, "tiercache: write-behind gives up its shard", "held", len(held), "err", err)
			return
		}
		if drainAt == 0 && w.closed.Load() {
			drainAt = uint64(time.Now().UnixMilli())
		}
		newest := uint64(0)
		if room := w.cfg.BatchSize - len(held); room > 0 {
			more, err := w.read(ctx, shard, room, held)
			if err != nil {
				w.logFails.Do(func() { log.WarnContext(ctx, "tiercache: write-behind read failed", "err", err) })
			}
			for _, m := range more {
				newest = max(newest, m.id.MS)
			}
			if len(more) > 0 {
				held = append(held, more...)
				sortMsgs(held) // writes a lost reply handed over may be older than some held
			}
		}
		if len(held) == 0 {
			if drainAt != 0 {
				return
			}
			if !sleep(ctx, w.cfg.PollInterval) {
				return
			}
			continue
		}
		if held, err = w.flushHeld(ctx, shard, held); err != nil {
			w.logFails.Do(func() { log.WarnContext(ctx, "tiercache: write-behind gives up its shard", "err", err) })
			return
		}
		if len(held) == 0 {
			backoff = 0
			if drainAt != 0 && newest > drainAt {
				return // written after Close began: not this process's to chase
			}
			continue
		}
		backoff = min(max(2*backoff, w.cfg.RetryBackoff), w.cfg.MaxRetryBackoff)
		if !sleep(ctx, backoff) {
			return
		}
	}
}

// takeOver makes sure the shard's group exists and claims every write
// pending on any consumer of it (a dead process's, or this one's before it
// gave the shard up), oldest first, so that they are flushed before
// anything newer.
func (w *Queue[V]) takeOver(ctx context.Context, shard int) ([]*wbMsg, error) {
	stream := w.streamKey(shard)
	err := w.rdb.XGroupCreateMkStream(ctx, stream, w.group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return nil, fmt.Errorf("create group: %w", err)
	}
	var held []*wbMsg
	for start := "0-0"; ; {
		msgs, next, err := w.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: stream, Group: w.group, Consumer: w.cfg.Consumer, Start: start, Count: int64(w.cfg.BatchSize),
		}).Result()
		if err != nil {
			return held, fmt.Errorf("XAUTOCLAIM: %w", err)
		}
		for _, m := range msgs {
			held = append(held, parseWBMsg(m))
		}
		if next == "0-0" || next == "" {
			break
		}
		start = next
	}
	// Consumers with nothing pending are dead or idle: only the lock
	// holder reads a shard. Removing them keeps XINFO readable.
	if cs, err := w.rdb.XInfoConsumers(ctx, stream, w.group).Result(); err == nil {
		for _, c := range cs {
			if c.Name != w.cfg.Consumer && c.Pending == 0 {
				_ = w.rdb.XGroupDelConsumer(ctx, stream, w.group, c.Name).Err()
			}
		}
	}
	return held, nil
}

// read returns up to n writes for this flusher that it does not hold yet:
// first those pending on it that held lacks, then new ones.
//
// A read whose reply is lost (a timeout after Redis ran it, or one that
// go-redis retried, which succeeds with later entries) has still handed
// its entries to this consumer: they wait in its pending list, and reading
// only new ones would flush later writes of their keys before them. So
// every read also reads the pending list from the start ("0"), in the same
// round trip, and takes the new entries only if that list ended within
// what it read: anything it did not reach is older than them.
func (w *Queue[V]) read(ctx context.Context, shard, n int, held []*wbMsg) ([]*wbMsg, error) {
	rctx, cancel := w.bound(ctx)
	defer cancel()
	stream := w.streamKey(shard)
	span := int64(len(held) + n)
	var pending, fresh *redis.XStreamSliceCmd
	_, err := w.rdb.Pipelined(rctx, func(p redis.Pipeliner) error {
		pending = p.XReadGroup(rctx, &redis.XReadGroupArgs{Group: w.group, Consumer: w.cfg.Consumer, Streams: []string{stream, "0"}, Count: span, Block: -1})
		fresh = p.XReadGroup(rctx, &redis.XReadGroupArgs{Group: w.group, Consumer: w.cfg.Consumer, Streams: []string{stream, ">"}, Count: int64(n), Block: -1})
		return nil
	})
	switch {
	case err != nil && strings.HasPrefix(err.Error(), "NOGROUP"):
		// The stream was deleted under us: recreate the group.
		return nil, w.rdb.XGroupCreateMkStream(ctx, stream, w.group, "0").Err()
	case err != nil && !errors.Is(err, redis.Nil):
		return nil, err
	}
	have := make(map[string]bool, len(held))
	for _, m := range held {
		have[m.sid] = true
	}
	var out []*wbMsg
	var listed int64
	for _, s := range pending.Val() {
		for _, m := range s.Messages {
			listed++
			if !have[m.ID] {
				w.stats.reread.Add(1)
				out = append(out, parseWBMsg(m))
			}
		}
	}
	if listed == span {
		// The pending list may go on past what we read; the new entries
		// are pending now too, and come back in order through "0".
		return out, nil
	}
	for _, s := range fresh.Val() {
		for _, m := range s.Messages {
			out = append(out, parseWBMsg(m))
		}
	}
	return out, nil
}

func parseWBMsg(m redis.XMessage) *wbMsg {
	msg := &wbMsg{sid: m.ID}
	var err error
	if msg.id, err = l2.ParseEntryID(m.ID); err != nil {
		msg.bad = err
		return msg
	}
	str := func(f string) string { s, _ := m.Values[f].(string); return s }
	msg.key, msg.payload = str("k"), str("v")
	ttl, err1 := strconv.ParseInt(str("ttl"), 10, 64)
	keep, err2 := strconv.ParseInt(str("keep"), 10, 64)
	if msg.key == "" || err1 != nil || err2 != nil || ttl <= 0 || keep < ttl {
		msg.bad = fmt.Errorf("malformed write-behind entry %s: %v", m.ID, m.Values)
		return msg
	}
	msg.ttl, msg.keep = time.Duration(ttl)*time.Millisecond, time.Duration(keep)*time.Millisecond
	return msg
}
