package invalidation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/time/rate"
)

// ErrClosed is returned by Publish after Close.
var ErrClosed = errors.New("invalidation: bus closed")

// ErrInvalidKey is returned by Publish for an empty key or one over
// Config.MaxKeyBytes; nothing is published then.
var ErrInvalidKey = errors.New("invalidation: invalid key")

// Config configures a Bus. Channel, Evict and Flush are required; the zero
// value of every other field means the default written beside it.
type Config struct {
	// Channel is the Redis pub/sub channel. Every process of one cache
	// namespace must use the same channel, and no other namespace may. On
	// a Redis Cluster it is a sharded channel (SPUBLISH and SSUBSCRIBE,
	// Redis 7): its hash slot picks the one shard that carries it, so that
	// each publisher's messages arrive in order.
	Channel string

	// Evict removes keys that another process changed from the local
	// copies. It runs on the bus's receiving goroutine, one message at a
	// time, and must not block for long.
	Evict func(keys []string)

	// Flush removes every local copy. The bus calls it when it may have
	// missed messages; reason says why ("resubscribe", "gap", "epoch",
	// "malformed", "fresh", "tags").
	Flush func(reason string)

	// EvictTags removes the local copies that carry any of tags (see
	// PublishTags). It runs as Evict does. Default: nil, and a tags
	// message flushes every local copy ("tags").
	EvictTags func(tags []string)

	// StalenessBound is the longest that an invalidation may go unapplied
	// before Fresh reports false. Default: 2 seconds.
	StalenessBound time.Duration

	// Heartbeat is how often this process publishes a heartbeat; it must be
	// under half of StalenessBound. Default: StalenessBound/4.
	Heartbeat time.Duration

	// Window is how long the publisher waits for more keys after the first
	// before sending a message. Default: 0, which sends at once and still
	// coalesces every key published while the previous message was in
	// flight.
	Window time.Duration

	// PublishTimeout bounds one PUBLISH. go-redis honours it only on a
	// client with ContextTimeoutEnabled (tiered.NewRedisClient sets it);
	// otherwise its own read and write timeouts apply. Default: 100 ms.
	PublishTimeout time.Duration

	// MaxKeyBytes, MaxKeysPerMessage and MaxMessageBytes bound what is
	// sent and what is accepted. Defaults: 1024, 512 and 64 KiB.
	MaxKeyBytes       int
	MaxKeysPerMessage int
	MaxMessageBytes   int

	// InstanceID names this process on the bus. Default: 16 random hex
	// digits. A fixed id (a pod name) makes a restart show up on the other
	// processes as a new epoch.
	InstanceID string

	// Logger receives structured logs. Default: slog.Default().
	Logger *slog.Logger

	// MeterProvider defaults to the global OpenTelemetry provider.
	MeterProvider metric.MeterProvider
}

func (cfg Config) withDefaults() (Config, error) {
	if cfg.StalenessBound == 0 {
		cfg.StalenessBound = 2 * time.Second
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = cfg.StalenessBound / 4
	}
	if cfg.PublishTimeout == 0 {
		cfg.PublishTimeout = 100 * time.Millisecond
	}
	if cfg.MaxKeyBytes == 0 {
		cfg.MaxKeyBytes = 1024
	}
	if cfg.MaxKeysPerMessage == 0 {
		cfg.MaxKeysPerMessage = 512
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 64 << 10
	}
	if cfg.InstanceID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		cfg.InstanceID = hex.EncodeToString(b[:])
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if cfg.Channel == "" {
		bad("Channel is required")
	}
	if cfg.Evict == nil || cfg.Flush == nil {
		bad("Evict and Flush are required")
	}
	if cfg.StalenessBound < 0 || cfg.Window < 0 || cfg.PublishTimeout < 0 {
		bad("durations must not be negative")
	}
	if cfg.Heartbeat <= 0 || 2*cfg.Heartbeat >= cfg.StalenessBound {
		bad("Heartbeat %v must be positive and under half of StalenessBound %v", cfg.Heartbeat, cfg.StalenessBound)
	}
	if cfg.MaxKeyBytes < 1 || cfg.MaxKeysPerMessage < 1 || cfg.MaxMessageBytes < fixedSize+maxInstanceID+2*cfg.MaxKeyBytes {
		bad("MaxKeyBytes %d, MaxKeysPerMessage %d and MaxMessageBytes %d must leave room for a key in a message",
			cfg.MaxKeyBytes, cfg.MaxKeysPerMessage, cfg.MaxMessageBytes)
	}
	if len(cfg.InstanceID) > maxInstanceID {
		bad("InstanceID is over %d bytes", maxInstanceID)
	}
	if len(errs) > 0 {
		return cfg, fmt.Errorf("invalidation: bad Config: %w", errors.Join(errs...))
	}
	return cfg, nil
}

// Bus publishes this process's invalidations and applies everyone else's.
type Bus struct {
	cfg     Config
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // rdb, if it is one: the bus then uses sharded pub/sub
	epoch   uint64
	tick    time.Duration // the watchdog's period

	reqs chan publishReq
	kick chan struct{} // asks for a heartbeat now: a subscription was confirmed
	stop chan struct{}
	wg   sync.WaitGroup

	closeOnce sync.Once
	closed    atomic.Bool

	// Fresh reports fresh while the monotonic clock, read as time since
	// base, is at most until: the newest own heartbeat's send time, with
	// every message before it applied, plus the bound. The clock is read on
	// every call because the watchdog that clears fresh can be descheduled
	// past the bound on a busy machine; a flag alone then lets a read
	// through that the bound forbids.
	fresh atomic.Bool
	base  time.Time
	until atomic.Int64
	// firstFresh is closed when Fresh first turns true.
	firstFresh     chan struct{}
	firstFreshOnce sync.Once

	// failing makes publishes fail at once after a failed PUBLISH, until a
	// heartbeat gets through: when Redis hangs, a write should not wait
	// PublishTimeout to learn what the last one learnt. While it is set,
	// heartbeats go out every tick, so that it clears soon after Redis does.
	failing atomic.Bool

	// lost counts messages given up before send saw them (their caller's
	// context ended first). send adds it to the sequence, so that the other
	// processes see a gap, as for a failed PUBLISH.
	lost atomic.Uint64

	mu sync.Mutex // guards ps, which Close must reach
	ps *redis.PubSub

	stats   stats
	metrics *instruments
	logErr  rate.Sometimes
}

type publishReq struct {
	kind  byte // kindKeys or kindTags
	names []string
	done  chan error
}

// New starts a Bus on rdb: it subscribes to cfg.Channel and starts
// publishing heartbeats. Fresh reports false until this process has heard
// its own first heartbeat. The client stays the caller's; Close does not
// close it.
func New(rdb redis.UniversalClient, cfg Config) (*Bus, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if rdb == nil || reflect.ValueOf(rdb).IsNil() {
		return nil, errors.New("invalidation: nil Redis client")
	}
	cluster, _ := rdb.(*redis.ClusterClient)
	b := &Bus{
		cfg:     cfg,
		rdb:     rdb,
		cluster: cluster,
		epoch:   uint64(time.Now().UnixNano()),
		base:    time.Now(),
		tick:    max(cfg.StalenessBound/20, time.Millisecond),
		reqs:    make(chan publishReq, 1024),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),

		firstFresh: make(chan struct{}),
		logErr:     rate.Sometimes{Interval: time.Second},
	}
	if b.metrics, err = newInstruments(b, cfg.MeterProvider.Meter(instrumentationName)); err != nil {
		return nil, fmt.Errorf("invalidation: metrics: %w", err)
	}
	b.wg.Add(3)
	go b.send()
	go b.receive()
	go b.watch()
	return b, nil
}

const instrumentationName = "github.com/tiercache/tiercache/invalidation"

// InstanceID returns the id this process publishes under.
func (b *Bus) InstanceID() string { return b.cfg.InstanceID }

// StalenessBound returns Config.StalenessBound.
func (b *Bus) StalenessBound() time.Duration { return b.cfg.StalenessBound }

// Fresh reports whether this process has applied every invalidation
// published more than StalenessBound ago. It costs an atomic load and a
// read of the monotonic clock.
func (b *Bus) Fresh() bool { return b.freshAt(time.Since(b.base)) }

// freshAt is Fresh at the time d after base.
func (b *Bus) freshAt(d time.Duration) bool { return b.fresh.Load() && int64(d) <= b.until.Load() }

// WaitFresh waits until the bus is fresh for the first time (subscribed,
// and its own first heartbeat heard back) or ctx is done, and reports
// whether it is fresh. A cache that waits before its first fill has
// nothing to flush when the bus turns fresh.
func (b *Bus) WaitFresh(ctx context.Context) bool {
	select {
	case <-b.firstFresh:
	case <-ctx.Done():
	case <-b.stop:
	}
	return b.Fresh()
}

// Publish sends keys to every other process on the channel and returns once
// Redis has accepted the message (or failed to). Keys published at about
// the same time by other goroutines travel in the same message.
//
// A publish that fails, or that ctx gives up on, still uses its sequence
// number: every other process sees the gap at this process's next
// heartbeat and flushes. A nil error means Redis accepted the message.
func (b *Bus) Publish(ctx context.Context, keys ...string) error {
	return b.enqueue(ctx, kindKeys, keys)
}

// PublishTags sends tags to every other process on the channel, whose
// Config.EvictTags removes their copies that carry them, as Publish does
// for keys.
func (b *Bus) PublishTags(ctx context.Context, tags ...string) error {
	return b.enqueue(ctx, kindTags, tags)
}

func (b *Bus) enqueue(ctx context.Context, kind byte, names []string) error {
	if len(names) == 0 {
		return nil
	}
	for _, k := range names {
		if k == "" || len(k) > b.cfg.MaxKeyBytes {
			return fmt.Errorf("%w: %d bytes (limit %d)", ErrInvalidKey, len(k), b.cfg.MaxKeyBytes)
		}
	}
	if b.closed.Load() {
		return ErrClosed
	}
	req := publishReq{kind: kind, names: names, done: make(chan error, 1)}
	select {
	case b.reqs <- req:
	case <-b.stop:
		return ErrClosed
	default:
		select {
		case b.reqs <- req:
		case <-b.stop:
			return ErrClosed
		case <-ctx.Done():
			b.lost.Add(1)
			b.stats.publishErrors.Add(1)
			select { // a heartbeat now shows the gap
			case b.kick <- struct{}{}:
			default:
			}
			return fmt.Errorf("invalidation: publish not sent: %w", ctx.Err())
		}
	}
	select {
	case err := <-req.done:
		return err
	case <-b.stop:
		// Close may have won the race for req: send has exited.
		select {
		case err := <-req.done:
			return err
		default:
			return ErrClosed
		}
	case <-ctx.Done():
		// The keys still go out, or their sequence number shows a gap;
		// only this caller stops waiting.
		return fmt.Errorf("invalidation: publish not confirmed: %w", ctx.Err())
	}
}

// Close stops the bus and waits for its goroutines. Publishes still queued
// fail with ErrClosed. It is safe to call more than once.
func (b *Bus) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		b.fresh.Store(false)
		close(b.stop)
		b.mu.Lock()
		if b.ps != nil {
			_ = b.ps.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
		_ = b.metrics.reg.Unregister()
	})
	return nil
}

// send is the only goroutine that publishes, so this process's messages
// and heartbeats reach Redis in sequence order.
func (b *Bus) send() {
	defer b.wg.Done()
	hb := time.NewTimer(b.cfg.Heartbeat)
	defer hb.Stop()
	next := time.Now().Add(b.cfg.Heartbeat) // when hb fires
	// soon brings the next heartbeat forward to a tick from now: after a
	// failed PUBLISH it is the probe that clears failing.
	soon := func() {
		if at := time.Now().Add(b.tick); at.Before(next) {
			next = at
			hb.Reset(b.tick)
		}
	}
	var seq uint64
	beat := func() {
		seq += b.lost.Swap(0)
		b.heartbeat(seq)
		next = time.Now().Add(b.cfg.Heartbeat)
		hb.Reset(b.cfg.Heartbeat)
		if b.failing.Load() {
			soon()
		}
	}
	publish := func(req publishReq) {
		batch := b.collect(req)
		var err error
		for _, m := range b.split(batch) {
			seq += 1 + b.lost.Swap(0)
			if e := b.publish(m.kind, seq, m.names); e != nil && err == nil {
				err = e
			}
		}
		for _, r := range batch {
			r.done <- err
		}
		if b.failing.Load() || b.lost.Load() > 0 {
			soon()
		}
	}
	for {
		// Writers waiting go before a heartbeat that is due: when Redis is
		// slow, a heartbeat can take all of PublishTimeout.
		select {
		case req := <-b.reqs:
			publish(req)
			continue
		default:
		}
		select {
		case <-b.stop:
			b.failQueued()
			return
		case <-hb.C:
			beat()
		case <-b.kick:
			beat()
		case req := <-b.reqs:
			publish(req)
		}
	}
}

// collect gathers req and whatever else is queued (for Config.Window more,
// if set) into one batch.
func (b *Bus) collect(req publishReq) []publishReq {
	batch := []publishReq{req}
	var window <-chan time.Time
	if b.cfg.Window > 0 {
		t := time.NewTimer(b.cfg.Window)
		defer t.Stop()
		window = t.C
	}
	for n := len(req.names); n < 64*b.cfg.MaxKeysPerMessage; {
		select {
		case r := <-b.reqs:
			batch = append(batch, r)
			n += len(r.names)
			continue
		default:
		}
		if window == nil {
			return batch
		}
		select {
		case r := <-b.reqs:
			batch = append(batch, r)
			n += len(r.names)
		case <-window:
			return batch
		case <-b.stop:
			return batch
		}
	}
	return batch
}

// outMsg is one message that split cut from a batch.
type outMsg struct {
	kind  byte
	names []string
}

// split dedupes the batch's keys and tags and cuts them into messages
// within the size limits: the keys first, then the tags.
func (b *Bus) split(batch []publishReq) []outMsg {
	var out []outMsg
	for _, kind := range []byte{kindKeys, kindTags} {
		seen := make(map[string]struct{})
		var cur []string
		size := fixedSize + len(b.cfg.InstanceID) + 4 + binaryUvarintMax
		for _, r := range batch {
			if r.kind != kind {
				continue
			}
			for _, k := range r.names {
				if _, dup := seen[k]; dup {
					continue
				}
				seen[k] = struct{}{}
				ks := keySize(k)
				if len(cur) > 0 && (len(cur) == b.cfg.MaxKeysPerMessage || size+ks > b.cfg.MaxMessageBytes) {
					out = append(out, outMsg{kind, cur})
					cur, size = nil, fixedSize+len(b.cfg.InstanceID)+4+binaryUvarintMax
				}
				cur = append(cur, k)
				size += ks
			}
		}
		if len(cur) > 0 {
			out = append(out, outMsg{kind, cur})
		}
	}
	return out
}

const binaryUvarintMax = 10

func (b *Bus) heartbeat(seq uint64) {
	if err := b.publish(kindHeartbeat, seq, nil); err == nil {
		b.failing.Store(false)
	}
}

// publish sends one message. A keys or tags message that fails still used
// its sequence number, so the other processes see the gap at the next
// heartbeat and flush: a lost invalidation costs them a flush, never a
// stale read past the bound.
func (b *Bus) publish(kind byte, seq uint64, keys []string) error {
	if kind != kindHeartbeat && b.failing.Load() {
		b.stats.publishErrors.Add(1)
		return fmt.Errorf("invalidation: publish skipped: the last one failed and no heartbeat has got through since")
	}
	m := message{kind: kind, instance: b.cfg.InstanceID, epoch: b.epoch, seq: seq, sentAt: time.Now().UnixNano(), keys: keys}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.PublishTimeout)
	var err error
	if b.cluster != nil {
		err = b.cluster.SPublish(ctx, b.cfg.Channel, m.append(nil)).Err()
	} else {
		err = b.rdb.Publish(ctx, b.cfg.Channel, m.append(nil)).Err()
	}
	cancel()
	if err != nil {
		b.reloadTopology()
		b.failing.Store(true)
		b.stats.publishErrors.Add(1)
		b.logErr.Do(func() {
			b.cfg.Logger.Warn("tiercache: invalidation publish failed; other processes will flush when it recovers",
				"channel", b.cfg.Channel, "err", err)
		})
		return fmt.Errorf("invalidation: publish: %w", err)
	}
	switch kind {
	case kindKeys:
		b.stats.sentMessages.Add(1)
		b.stats.sentKeys.Add(int64(len(keys)))
	case kindTags:
		b.stats.sentMessages.Add(1)
		b.stats.sentTags.Add(int64(len(keys)))
	}
	return nil
}

func (b *Bus) failQueued() {
	for {
		select {
		case r := <-b.reqs:
			r.done <- ErrClosed
		default:
			return
		}
	}
}
