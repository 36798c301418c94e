package invalidation

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// The receiving side: one subscription, the peers' sequence numbers, and
// the watchdog that keeps the staleness bound.

// peer is what the receiver remembers of another publisher.
type peer struct {
	epoch, seq uint64
	seen       time.Time
}

// receive reads the subscription until Close. It reads with go-redis's
// Receive rather than Channel: Channel drops messages when its buffer stays
// full, and hides reconnections, both of which the bus must see.
func (b *Bus) receive() {
	defer b.wg.Done()
	peers := make(map[string]*peer)
	subscribed := false
	var since time.Time // when the current subscription was confirmed
	var errs int
	for !b.closed.Load() {
		ps := b.subscription()
		if ps == nil {
			return
		}
		// Our own heartbeats arrive every Heartbeat; a silence of a whole
		// bound means a dead connection that TCP has not noticed. Start a
		// new subscription then.
		msg, err := ps.ReceiveTimeout(context.Background(), b.cfg.StalenessBound)
		if err != nil {
			if b.closed.Load() {
				return
			}
			if b.fresh.Swap(false) {
				b.stats.staleSpells.Add(1)
			}
			b.stats.receiveErrors.Add(1)
			b.logErr.Do(func() {
				b.cfg.Logger.Warn("tiercache: invalidation subscription failed; local copies are served only while younger than the bound",
					"channel", b.cfg.Channel, "err", err)
			})
			var nerr interface{ Timeout() bool }
			if b.cluster != nil || errors.As(err, &nerr) && nerr.Timeout() {
				// On a cluster the error may be a MOVED, which leaves
				// the connection up and unsubscribed, or a dead shard
				// that go-redis would dial again: subscribe anew where
				// the reloaded slot map says.
				b.reloadTopology()
				b.resetSubscription(ps)
			}
			if errs++; errs > 1 {
				b.sleep(min(time.Duration(errs)*10*time.Millisecond, b.cfg.Heartbeat))
			}
			continue
		}
		errs = 0
		switch msg := msg.(type) {
		case *redis.Subscription:
			if msg.Kind == "sunsubscribe" || msg.Kind == "unsubscribe" {
				// We never unsubscribe: the server did, because the
				// channel's slot moved to another shard (a resharding or
				// a failover). Subscribe where it is now; what was missed
				// meanwhile is flushed when the new one is confirmed.
				if b.fresh.Swap(false) {
					b.stats.staleSpells.Add(1)
				}
				b.reloadTopology()
				b.resetSubscription(ps)
				continue
			}
			if msg.Kind != "subscribe" && msg.Kind != "ssubscribe" {
				continue
			}
			if subscribed {
				b.flush("resubscribe")
			}
			subscribed = true
			since = time.Now()
			// A heartbeat now, rather than at the next tick, makes the bus
			// fresh within a round trip of subscribing.
			select {
			case b.kick <- struct{}{}:
			default:
			}
		case *redis.Message:
			b.apply(msg.Payload, peers, since)
		}
	}
}

// subscription returns the current PubSub, subscribing if there is none.
func (b *Bus) subscription() *redis.PubSub {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return nil
	}
	if b.ps == nil {
		// Subscribe does not wait for Redis; the confirmation arrives as a
		// *redis.Subscription, and errors surface in Receive.
		if b.cluster != nil {
			b.ps = b.cluster.SSubscribe(context.Background(), b.cfg.Channel)
		} else {
			b.ps = b.rdb.Subscribe(context.Background(), b.cfg.Channel)
		}
	}
	return b.ps
}

func (b *Bus) resetSubscription(ps *redis.PubSub) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ps == ps {
		_ = ps.Close()
		b.ps = nil
	}
}

// reloadTopology asks go-redis to reload a cluster's slot map, which it
// does by itself only on a MOVED reply or every minute: after a failover,
// the dead master's address would be dialled again and again. go-redis
// coalesces the reloads, at most one per 200 ms.
func (b *Bus) reloadTopology() {
	if b.cluster != nil {
		b.cluster.ReloadState(context.Background())
	}
}

func (b *Bus) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-b.stop:
	}
}

// apply handles one message from the channel.
func (b *Bus) apply(payload string, peers map[string]*peer, since time.Time) {
	m, err := decodeMessage([]byte(payload), b.cfg.MaxKeysPerMessage, b.cfg.MaxKeyBytes)
	if err == nil && len(payload) > b.cfg.MaxMessageBytes {
		err = fmt.Errorf("%w: %d bytes, limit %d", errMalformed, len(payload), b.cfg.MaxMessageBytes)
	}
	if err != nil {
		// Something else writes on our channel, or a peer runs an
		// incompatible version: what it meant to invalidate is unknown.
		b.stats.malformed.Add(1)
		b.logErr.Do(func() {
			b.cfg.Logger.Warn("tiercache: malformed invalidation message; flushing", "channel", b.cfg.Channel, "err", err)
		})
		b.flush("malformed")
		return
	}
	now := time.Now()
	if m.instance == b.cfg.InstanceID && m.epoch != b.epoch {
		// Another live process publishes under our id (a fixed InstanceID
		// given to two processes). Its keys are applied like anyone's.
		b.logErr.Do(func() {
			b.cfg.Logger.Warn("tiercache: another process publishes under this InstanceID; give each process its own",
				"channel", b.cfg.Channel, "instance", m.instance)
		})
	}
	if m.instance == b.cfg.InstanceID && m.epoch == b.epoch {
		if m.kind == kindHeartbeat {
			b.heardOwn(m, now)
			b.prune(peers, now)
		}
		return
	}
	b.applyPeer(m, peers, now, since)
}

// heardOwn takes in one of this process's own heartbeats: it proves that
// every message published before m.sentAt has been applied.
func (b *Bus) heardOwn(m message, now time.Time) {
	echo := max(now.Sub(time.Unix(0, m.sentAt)), 0) // 0 if the wall clock stepped back
	b.metrics.recordEcho(echo)
	at := now.Sub(b.base)
	until := int64(at + b.cfg.StalenessBound - echo)
	if b.freshAt(at) {
		b.until.Store(max(until, b.until.Load()))
		return
	}
	if echo > b.cfg.StalenessBound-b.tick {
		return
	}
	// Whatever was missed while we were not fresh (the watchdog may not
	// have noticed yet) is gone from the local copies before they are
	// trusted again.
	if b.fresh.Swap(false) {
		b.stats.staleSpells.Add(1)
	}
	b.flush("fresh")
	b.until.Store(until)
	b.fresh.Store(true)
	b.firstFreshOnce.Do(func() { close(b.firstFresh) })
}

// applyPeer applies another process's message, after checking its sequence
// for a gap.
func (b *Bus) applyPeer(m message, peers map[string]*peer, now, since time.Time) {
	b.stats.receivedMessages.Add(1)
	p := peers[m.instance]
	switch {
	case p == nil:
		// A publisher we have not heard from. What it sent before we
		// subscribed was in L2 before we flushed and went fresh. But every
		// publisher sends a heartbeat each Heartbeat: one we first hear
		// from long after subscribing, already past its first message, has
		// published something we never got (a failed publish, or while we
		// had forgotten it).
		p = &peer{epoch: m.epoch}
		peers[m.instance] = p
		if m.kind == kindHeartbeat {
			p.seq = m.seq
		} else {
			p.seq = m.seq - 1
		}
		if p.seq > 0 && now.Sub(since) > 3*b.cfg.Heartbeat {
			b.flush("gap")
		}
	case p.epoch != m.epoch:
		b.flush("epoch")
		p.epoch, p.seq = m.epoch, 0
		if m.kind == kindHeartbeat {
			p.seq = m.seq
		} else {
			p.seq = m.seq - 1
		}
	}
	p.seen = now
	switch m.kind {
	case kindHeartbeat:
		if m.seq > p.seq {
			b.flush("gap")
			p.seq = m.seq
		}
	case kindKeys, kindTags:
		if m.seq > p.seq+1 {
			b.flush("gap")
		}
		p.seq = max(p.seq, m.seq)
		if m.kind == kindKeys {
			b.stats.receivedKeys.Add(int64(len(m.keys)))
			b.cfg.Evict(m.keys)
			return
		}
		b.stats.receivedTags.Add(int64(len(m.keys)))
		if b.cfg.EvictTags == nil {
			b.flush("tags")
			return
		}
		b.cfg.EvictTags(m.keys)
	}
}

// prune forgets publishers not heard from for a long while (ten bounds):
// they stopped. If one comes back it is a new publisher, which is safe.
func (b *Bus) prune(peers map[string]*peer, now time.Time) {
	for id, p := range peers {
		if now.Sub(p.seen) > 10*b.cfg.StalenessBound {
			delete(peers, id)
		}
	}
}

func (b *Bus) flush(reason string) {
	b.stats.flushes.Add(1)
	b.metrics.recordFlush(reason)
	if reason != "fresh" || b.stats.flushes.Load() > 1 {
		b.cfg.Logger.Info("tiercache: flushing local copies", "channel", b.cfg.Channel, "reason", reason)
	}
	b.cfg.Flush(reason)
}

// watch turns fresh off a tick before the newest own heartbeat heard is
// older than the bound, so that a stale spell is counted, logged and ends
// with a flush. Fresh itself does not rely on it: it reads the clock.
func (b *Bus) watch() {
	defer b.wg.Done()
	t := time.NewTicker(b.tick)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case now := <-t.C:
			if int64(now.Sub(b.base)) > b.until.Load()-int64(b.tick) && b.fresh.CompareAndSwap(true, false) {
				b.stats.staleSpells.Add(1)
				b.cfg.Logger.Warn("tiercache: invalidation bus is behind its staleness bound; local copies are served only while younger than it",
					"channel", b.cfg.Channel, "bound", b.cfg.StalenessBound)
			}
		}
	}
}
