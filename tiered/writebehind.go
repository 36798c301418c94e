package tiered

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

// Write-behind keeps each write in a Redis stream until the source has it.
//
// Keys are spread over Shards streams ("<ns>#wb:<shard>"), each with one
// consumer group. At most one process flushes a shard at a time: it holds
// the shard's lock ("<ns>#wb:<shard>:owner", SET NX with a TTL it renews
// before every batch). A consumer group alone would hand one key's writes
// to several consumers, which could apply them out of order; the lock
// makes a shard a queue with a single reader, as a Kafka partition is, and
// the group still keeps what that reader was handed and has not acked (its
// pending entries), so that the next owner claims them with XAUTOCLAIM.
//
// The cache's copy of a pending value lives in L2 with no expiry, in an
// envelope that carries its entry ID (flagPending), so that neither a TTL
// nor a volatile-* eviction policy can drop it before the source has it,
// and so that a flush or an older write never overwrites a newer one.

// wbPut writes a write-behind value to KEYS[1], comparing entry IDs with
// the pending value there, if any: ARGV[1] is the envelope, ARGV[2] and
// ARGV[3] the write's entry ID (ms, seq), ARGV[4] the expiry in ms (0:
// none) and ARGV[5] the mode:
//
//	put:    store a new pending value unless a newer one is pending;
//	settle: after a flush, replace the pending value (with ARGV[1], an
//	        ordinary envelope with a TTL) unless a newer one is pending;
//	drop:   after a dead-letter, delete the pending value unless newer.
//
// It returns 1 if it wrote, 0 if it left the key alone. The entry ID is
// read from the envelope's pending extension (see envelope.go).
var wbPut = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
local pending = cur and #cur >= 32 and string.byte(cur, 1) == 199 and bit.band(string.byte(cur, 4), 16) ~= 0
if pending then
  local ms, seq = struct.unpack('>I8>I8', cur, 17)
  local ams, aseq = tonumber(ARGV[2]), tonumber(ARGV[3])
  if ms > ams or (ms == ams and seq > aseq) then return 0 end
elseif ARGV[5] ~= 'put' then
  return 0
end
if ARGV[5] == 'drop' then
  redis.call('DEL', KEYS[1])
elseif ARGV[4] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
end
return 1`)

// renewLock extends the lock KEYS[1] by ARGV[2] ms if ARGV[1] holds it.
var renewLock = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)

// PendingWrite is one write-behind value on its way to the source.
type PendingWrite[V any] struct {
	Key   string
	Value V
	// ID is the write's stream entry ID ("<ms>-<seq>"). The IDs of one
	// key's writes increase in the order the writes were acknowledged. A
	// batch is delivered at least once, so a source that stores the ID
	// beside the value can refuse a replay of an older write
	// ("UPDATE ... WHERE version < $id").
	ID string
}

// FlushFunc writes a batch to the source: each key once, with its latest
// value. It returns nil only once the source has all of them; an error
// makes the batch be retried, key by key (see WriteBehindConfig).
type FlushFunc[V any] func(ctx context.Context, writes []PendingWrite[V]) error

// WriteBehindConfig configures a WriteBehind. Zero values mean the
// defaults written beside them.
type WriteBehindConfig[V any] struct {
	// Flush writes batches to the source. Required, unless NoFlusher.
	Flush FlushFunc[V]

	// NoFlusher makes this process only append writes, leaving their
	// flushing to other processes.
	NoFlusher bool

	// Shards is how many streams the writes are spread over, by key: the
	// most batches flushed at once, cluster-wide. Every process of a
	// namespace must use the same number, and change it only when the
	// streams are empty, or one key's writes could be applied out of order.
	// Default: 8.
	Shards int

	// BatchSize bounds the writes read from a shard and handed to Flush at
	// once. Default: 100.
	BatchSize int

	// MaxAttempts is how many times a write may fail on its own (in a batch
	// of one) while the source accepts other writes before it moves to the
	// dead-letter stream "<ns>#wb:dead". A failure counts only if the
	// source accepted some write since the key's previous failure, so an
	// outage of the source, which fails every write, moves nothing there.
	// Default: 10.
	MaxAttempts int

	// RetryBackoff is the wait after a failed batch, doubling with every
	// failure up to MaxRetryBackoff. Defaults: 100 ms, 5 s.
	RetryBackoff, MaxRetryBackoff time.Duration

	// FlushTimeout bounds a Flush call. Default: 5 s.
	FlushTimeout time.Duration

	// LockTTL is how long a shard's lock outlives its holder: after a
	// crash, another process takes the shard over within about LockTTL.
	// It must exceed twice FlushTimeout, since the lock is renewed only
	// between batches. Default: 3 × FlushTimeout.
	LockTTL time.Duration

	// PollInterval is how often an idle shard is read. Default: 50 ms.
	PollInterval time.Duration

	// Consumer names this process in the consumer groups. Default:
	// "<hostname>:<pid>:<random>", unique per WriteBehind.
	Consumer string
}

// WriteBehind is the write-behind strategy over a Cache: Set acknowledges
// a write once Redis holds it, and flushers in any process apply it to the
// source later, in batches. See NewWriteBehind.
type WriteBehind[V any] struct {
	c     *Cache[V]
	rdb   redis.UniversalClient
	cfg   WriteBehindConfig[V]
	group string

	closed   atomic.Bool
	draining chan struct{}   // closed by Close: flushers stop once their shard is empty
	ctx      context.Context // cancelled when Close's context ends: flushers stop at once
	cancel   context.CancelFunc
	mgr      sync.WaitGroup
	workers  sync.WaitGroup
	owned    []atomic.Bool
	held     atomic.Int64 // writes read by this process's flushers and not yet acked

	// successes counts batches the source accepted; see MaxAttempts.
	successes atomic.Int64
	stats     struct {
		appended, flushed, retried, dead, failures atomic.Int64
		queue, lagMs                               atomic.Int64
	}
	reg      metric.Registration
	logFails rate.Sometimes

	// noLock lets every process flush every shard at once, so that a test
	// can show the reordering that the shard locks prevent.
	noLock bool
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
	return newWriteBehind(c, cfg, false)
}

func newWriteBehind[V any](c *Cache[V], cfg WriteBehindConfig[V], noLock bool) (*WriteBehind[V], error) {
	if c == nil || c.l2 == nil || c.l2.rdb == nil {
		return nil, errors.New("tiered: write-behind needs a Cache with Config.Redis")
	}
	if c.isClosed() {
		return nil, ErrClosed
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	w := &WriteBehind[V]{
		c: c, rdb: c.l2.rdb, cfg: cfg, group: "tiercache",
		draining: make(chan struct{}),
		owned:    make([]atomic.Bool, cfg.Shards),
		logFails: rate.Sometimes{Interval: time.Second},
		noLock:   noLock,
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	w.checkEvictionPolicy()
	mp := c.cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if w.reg, err = w.instruments(mp.Meter(instrumentationName)); err != nil {
		return nil, fmt.Errorf("tiered: write-behind metrics: %w", err)
	}
	w.mgr.Add(1)
	go w.manage()
	return w, nil
}

// checkEvictionPolicy warns if Redis may evict keys without a TTL, pending
// values among them. Best effort: CONFIG may be disabled or renamed.
func (w *WriteBehind[V]) checkEvictionPolicy() {
	ctx, cancel := context.WithTimeout(w.ctx, w.c.cfg.L2Timeout*5)
	defer cancel()
	cfg, err := w.rdb.ConfigGet(ctx, "maxmemory-policy").Result()
	if p := cfg["maxmemory-policy"]; err == nil && strings.HasPrefix(p, "allkeys-") {
		w.c.cfg.Logger.Warn("tiercache: Redis may evict pending write-behind values: their readers would then load the source's older value until the flush; use noeviction or a volatile-* maxmemory-policy",
			"namespace", w.c.cfg.Namespace, "maxmemory-policy", p)
	}
}

func (cfg WriteBehindConfig[V]) withDefaults() (WriteBehindConfig[V], error) {
	if cfg.Shards == 0 {
		cfg.Shards = 8
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 100
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 10
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = 100 * time.Millisecond
	}
	if cfg.MaxRetryBackoff == 0 {
		cfg.MaxRetryBackoff = 5 * time.Second
	}
	if cfg.FlushTimeout == 0 {
		cfg.FlushTimeout = 5 * time.Second
	}
	if cfg.LockTTL == 0 {
		cfg.LockTTL = 3 * cfg.FlushTimeout
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.Consumer == "" {
		host, _ := os.Hostname()
		cfg.Consumer = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), strconv.FormatUint(uint64(time.Now().UnixNano())&0xffffff, 36))
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if cfg.Flush == nil && !cfg.NoFlusher {
		bad("Flush is required unless NoFlusher")
	}
	if cfg.Shards < 1 || cfg.Shards > 1024 {
		bad("Shards %d must be 1 to 1024", cfg.Shards)
	}
	if cfg.BatchSize < 1 || cfg.MaxAttempts < 1 {
		bad("BatchSize %d and MaxAttempts %d must be positive", cfg.BatchSize, cfg.MaxAttempts)
	}
	if cfg.RetryBackoff < 0 || cfg.MaxRetryBackoff < cfg.RetryBackoff || cfg.FlushTimeout < 0 || cfg.PollInterval < 0 {
		bad("durations must be positive, MaxRetryBackoff at least RetryBackoff")
	}
	if cfg.LockTTL <= 2*cfg.FlushTimeout {
		bad("LockTTL %v must exceed twice FlushTimeout %v", cfg.LockTTL, cfg.FlushTimeout)
	}
	if len(errs) > 0 {
		return cfg, fmt.Errorf("tiered: bad WriteBehindConfig: %w", errors.Join(errs...))
	}
	return cfg, nil
}

// Set acknowledges a write of v under key once Redis holds it in the
// write-behind stream; a flusher writes it to the source later. The cache
// holds v from then on: in L2, with no expiry until it is flushed, and in
// this process's L1, and every other process's L1 copy is invalidated.
// Options (WithTTL, WithStale, WithTags) apply from the flush on.
//
// An error means the write was not acknowledged and the cache is
// unchanged; as with any database call, a timeout may hide an append that
// Redis did make, which is then flushed. Once the write is in the stream,
// Set returns nil: a failure to update L2 or to invalidate the other
// processes after that is counted and logged, and L2 then keeps its older
// value until it expires.
func (w *WriteBehind[V]) Set(ctx context.Context, key string, v V, opts ...Option) (err error) {
	c := w.c
	if err := c.checkKey(key); err != nil {
		return err
	}
	o, err := c.options(opts)
	if err != nil {
		return err
	}
	if w.closed.Load() || c.isClosed() {
		return ErrClosed
	}
	ctx, span := c.tracer.Start(ctx, "tiered.WriteBehind.Set", trace.WithAttributes(attribute.String("tiercache.namespace", c.cfg.Namespace)))
	defer endSpan(span, &err)

	payload, err := c.cfg.Codec.Marshal(v)
	if err != nil {
		return fmt.Errorf("tiered: encode %q: %w", key, err)
	}
	if len(payload) > c.cfg.MaxValueBytes {
		return fmt.Errorf("%w: %q encodes to %d bytes, limit %d", ErrValueTooLarge, key, len(payload), c.cfg.MaxValueBytes)
	}
	ttl := c.jitter(o.ttl)
	keep := ttl + max(o.staleTTL, o.maxStale)
	var sid string
	err = c.l2.call(ctx, func(ctx context.Context) error {
		sid, err = w.rdb.XAdd(ctx, &redis.XAddArgs{
			Stream: w.streamKey(w.shard(key)),
			Values: []any{"k", key, "v", payload, "ttl", ttl.Milliseconds(), "keep", keep.Milliseconds(), "tags", strings.Join(o.tags, "\x00")},
		}).Result()
		return err
	})
	if err != nil {
		c.l2Failed(ctx, "write-behind append", key, err)
		return fmt.Errorf("tiered: write-behind append %q: %w", key, err)
	}
	w.stats.appended.Add(1)
	id, err := parseEntryID(sid)
	if err != nil {
		return nil // acknowledged; without an ID, the flush fills L2
	}
	b := appendPendingEnvelope(make([]byte, 0, headerSize+pendingExt+len(payload)), c.cfg.Codec.ID(), id, payload)
	var wrote bool
	l2err := c.l2.call(ctx, func(ctx context.Context) error {
		n, err := wbPut.Run(ctx, w.rdb, []string{c.l2Key(key)}, b, id.ms, id.seq, 0, "put").Int()
		wrote = n == 1
		return err
	})
	if l2err == nil && wrote && len(o.tags) > 0 {
		l2err = c.tagWritten(ctx, key, o.tags, keep)
	}
	c.fence.invalidate(key)
	if l2err != nil || !wrote {
		// L2 holds an older value (failure) or a newer pending one (a
		// concurrent Set): this process must read it, not v.
		c.l1.del(key)
	} else {
		c.l1.set(key, &entry[V]{v: v, filled: time.Now().UnixNano(), cost: int64(len(b) + len(key))}, c.l1TTL(0))
	}
	if l2err != nil {
		c.l2Failed(ctx, "write-behind set", key, l2err)
	}
	_ = c.publish(ctx, key) // the bus counts and logs its failures
	return nil
}

// Close stops accepting writes and lets this process's flushers empty
// their shards until ctx ends; what is left stays in the streams for
// another process (or the next start) to flush. It returns ctx's error if
// writes held by this process were left unflushed. Close the WriteBehind
// before its Cache.
func (w *WriteBehind[V]) Close(ctx context.Context) error {
	if !w.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(w.draining)
	done := make(chan struct{})
	go func() { w.mgr.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		w.cancel()
		<-done
		err = fmt.Errorf("tiered: write-behind closed before flushing everything; the rest stays queued for another process: %w", ctx.Err())
	}
	w.cancel()
	return errors.Join(err, w.reg.Unregister())
}

// WriteBehindStats is a snapshot of a WriteBehind's counters.
type WriteBehindStats struct {
	// Appended counts writes acknowledged by Set in this process; Flushed
	// counts writes its flushers applied to the source (superseded writes
	// of a key included), Retried those they wrote again after a failure,
	// DeadLettered those they moved to the dead-letter stream, and
	// FlushErrors the failed Flush calls.
	Appended, Flushed, Retried, DeadLettered, FlushErrors int64
	// QueueLength is how many writes wait in the streams, cluster-wide,
	// and Lag how long the oldest of them has waited: sampled by every
	// process about every PollInterval × 20 (at most a second).
	QueueLength int64
	Lag         time.Duration
	// Shards is how many shards this process flushes now.
	Shards int
}

// Stats returns a snapshot of w's counters.
func (w *WriteBehind[V]) Stats() WriteBehindStats {
	s := WriteBehindStats{
		Appended: w.stats.appended.Load(), Flushed: w.stats.flushed.Load(), Retried: w.stats.retried.Load(),
		DeadLettered: w.stats.dead.Load(), FlushErrors: w.stats.failures.Load(),
		QueueLength: w.stats.queue.Load(), Lag: time.Duration(w.stats.lagMs.Load()) * time.Millisecond,
	}
	for i := range w.owned {
		if w.owned[i].Load() {
			s.Shards++
		}
	}
	return s
}

func (w *WriteBehind[V]) shard(key string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(w.cfg.Shards))
}

func (w *WriteBehind[V]) streamKey(shard int) string {
	return w.c.cfg.Namespace + "#wb:" + strconv.Itoa(shard)
}

func (w *WriteBehind[V]) deadKey() string { return w.c.cfg.Namespace + "#wb:dead" }

// manage takes the shards no process holds and samples the queue, until
// Close; then it waits for its flushers.
func (w *WriteBehind[V]) manage() {
	defer w.mgr.Done()
	sample := min(max(20*w.cfg.PollInterval, 100*time.Millisecond), time.Second)
	tick := time.NewTicker(min(sample, w.cfg.LockTTL/3))
	defer tick.Stop()
	for {
		w.sample()
		if !w.cfg.NoFlusher {
			for s := range w.owned {
				if !w.owned[s].Load() && w.acquire(s) {
					w.owned[s].Store(true)
					w.workers.Add(1)
					go w.work(s)
				}
			}
		}
		select {
		case <-tick.C:
		case <-w.draining:
			w.workers.Wait()
			w.sample()
			return
		}
	}
}

// sample reads the queue length and the oldest entry of every shard.
func (w *WriteBehind[V]) sample() {
	ctx, cancel := context.WithTimeout(w.ctx, w.c.cfg.L2Timeout*5)
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
			if id, err := parseEntryID(m[0].ID); err == nil && (oldest == 0 || id.ms < oldest) {
				oldest = id.ms
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

func (w *WriteBehind[V]) lockKey(shard int) string { return w.streamKey(shard) + ":owner" }

func (w *WriteBehind[V]) acquire(shard int) bool {
	if w.noLock {
		return true
	}
	ctx, cancel := context.WithTimeout(w.ctx, w.c.cfg.L2Timeout*5)
	defer cancel()
	ok, err := w.rdb.SetNX(ctx, w.lockKey(shard), w.cfg.Consumer, w.cfg.LockTTL).Result()
	return err == nil && ok
}

// renew extends the shard's lock; false if this process no longer holds it.
func (w *WriteBehind[V]) renew(ctx context.Context, shard int) bool {
	if w.noLock {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, w.c.cfg.L2Timeout*5)
	defer cancel()
	n, err := renewLock.Run(ctx, w.rdb, []string{w.lockKey(shard)}, w.cfg.Consumer, w.cfg.LockTTL.Milliseconds()).Int()
	return err == nil && n == 1
}

// wbMsg is one write read from a shard.
type wbMsg struct {
	id         entryID
	sid        string
	key        string
	payload    string
	ttl, keep  time.Duration
	tags       []string
	bad        error // the entry could not be parsed: it goes to the dead letters
	failures   int   // failed Flush calls that held it
	attempts   int   // failures counted against MaxAttempts
	lastFailAt int64 // w.successes at the last counted failure
}

// work flushes one shard while this process holds its lock.
func (w *WriteBehind[V]) work(shard int) {
	defer w.workers.Done()
	ctx := w.ctx
	log := w.c.cfg.Logger.With("namespace", w.c.cfg.Namespace, "shard", shard, "consumer", w.cfg.Consumer)
	defer func() {
		w.owned[shard].Store(false)
		rctx, cancel := context.WithTimeout(context.Background(), w.c.cfg.L2Timeout*5)
		// Released only if still ours, so that another process takes the
		// shard over at once instead of after LockTTL.
		_ = leaseRelease.Run(rctx, w.rdb, []string{w.lockKey(shard)}, w.cfg.Consumer).Err()
		cancel()
	}()
	held, err := w.takeOver(ctx, shard)
	if err != nil {
		w.logFails.Do(func() { log.WarnContext(ctx, "tiercache: write-behind shard take-over failed", "err", err) })
		return
	}
	log.DebugContext(ctx, "tiercache: write-behind flushing shard", "claimed", len(held))
	backoff := time.Duration(0)
	defer func() { w.held.Add(-int64(len(held))) }()
	for ctx.Err() == nil {
		if !w.renew(ctx, shard) {
			log.InfoContext(ctx, "tiercache: write-behind lost its shard lock", "held", len(held))
			return
		}
		if room := w.cfg.BatchSize - len(held); room > 0 {
			more, err := w.read(ctx, shard, room)
			if err != nil {
				w.logFails.Do(func() { log.WarnContext(ctx, "tiercache: write-behind read failed", "err", err) })
			}
			held = append(held, more...)
			w.held.Add(int64(len(more)))
		}
		if len(held) == 0 {
			select {
			case <-w.draining:
				return
			default:
			}
			if !sleep(ctx, w.cfg.PollInterval) {
				return
			}
			continue
		}
		n := len(held)
		held = w.flushHeld(ctx, shard, held)
		w.held.Add(int64(len(held) - n))
		if len(held) == 0 {
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, w.cfg.RetryBackoff), w.cfg.MaxRetryBackoff)
		if !sleep(ctx, backoff) {
			return
		}
	}
}

// takeOver makes sure the shard's group exists and claims every write
// pending on any consumer of it (a dead process's, or this one's before a
// lost lock), oldest first, so that they are flushed before anything newer.
func (w *WriteBehind[V]) takeOver(ctx context.Context, shard int) ([]*wbMsg, error) {
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
	w.held.Add(int64(len(held)))
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

// read returns up to n writes not yet handed to any consumer.
func (w *WriteBehind[V]) read(ctx context.Context, shard, n int) ([]*wbMsg, error) {
	rctx, cancel := context.WithTimeout(ctx, w.c.cfg.L2Timeout*5)
	defer cancel()
	streams, err := w.rdb.XReadGroup(rctx, &redis.XReadGroupArgs{
		Group: w.group, Consumer: w.cfg.Consumer, Streams: []string{w.streamKey(shard), ">"},
		Count: int64(n), Block: -1,
	}).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case err != nil && strings.HasPrefix(err.Error(), "NOGROUP"):
		// The stream was deleted under us: recreate the group.
		return nil, w.rdb.XGroupCreateMkStream(ctx, w.streamKey(shard), w.group, "0").Err()
	case err != nil:
		return nil, err
	}
	var out []*wbMsg
	for _, s := range streams {
		for _, m := range s.Messages {
			out = append(out, parseWBMsg(m))
		}
	}
	return out, nil
}

func parseWBMsg(m redis.XMessage) *wbMsg {
	msg := &wbMsg{sid: m.ID}
	var err error
	if msg.id, err = parseEntryID(m.ID); err != nil {
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
	if t := str("tags"); t != "" {
		msg.tags = strings.Split(t, "\x00")
	}
	return msg
}

// wbItem is one key of a batch: its latest write, which supersedes the
// others.
type wbItem[V any] struct {
	msgs   []*wbMsg // in ID order; the last is the one written
	value  V
	failed error
}

func (it *wbItem[V]) latest() *wbMsg { return it.msgs[len(it.msgs)-1] }

// flushHeld writes held (in ID order) to the source and returns what is
// left of it, in ID order: the writes of the keys that failed.
func (w *WriteBehind[V]) flushHeld(ctx context.Context, shard int, held []*wbMsg) []*wbMsg {
	var items []*wbItem[V]
	byKey := make(map[string]*wbItem[V], len(held))
	for _, m := range held {
		if m.bad != nil {
			w.deadLetter(ctx, shard, &wbItem[V]{msgs: []*wbMsg{m}, failed: m.bad})
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
	var batch []*wbItem[V]
	for _, it := range items {
		if err := w.c.cfg.Codec.Unmarshal([]byte(it.latest().payload), &it.value); err != nil {
			it.failed = fmt.Errorf("decode: %w", err)
			w.deadLetter(ctx, shard, it)
			continue
		}
		batch = append(batch, it)
	}
	if len(batch) == 0 {
		return nil
	}
	if err := w.write(ctx, batch); err == nil {
		w.done(ctx, shard, batch)
		return nil
	} else if len(batch) == 1 {
		batch[0].failed = err
	} else {
		// Key by key, so that one poison write does not hold back the rest.
		for _, it := range batch {
			if ctx.Err() != nil {
				it.failed = ctx.Err()
				continue
			}
			if it.failed = w.write(ctx, []*wbItem[V]{it}); it.failed == nil {
				w.done(ctx, shard, []*wbItem[V]{it})
			}
		}
	}
	var left []*wbMsg
	for _, it := range batch {
		if it.failed == nil {
			continue
		}
		m := it.latest()
		m.failures++
		if ok := w.successes.Load(); m.attempts == 0 || m.lastFailAt != ok {
			m.attempts++
			m.lastFailAt = ok
		}
		if m.attempts >= w.cfg.MaxAttempts && ctx.Err() == nil {
			w.deadLetter(ctx, shard, it)
			continue
		}
		left = append(left, it.msgs...)
	}
	sortMsgs(left)
	return left
}

// write calls Flush for items, bounded by FlushTimeout, a panic turned
// into an error.
func (w *WriteBehind[V]) write(ctx context.Context, items []*wbItem[V]) (err error) {
	writes := make([]PendingWrite[V], len(items))
	for i, it := range items {
		m := it.latest()
		writes[i] = PendingWrite[V]{Key: m.key, Value: it.value, ID: m.sid}
		if m.failures > 0 {
			w.stats.retried.Add(1)
		}
	}
	ctx, span := w.c.tracer.Start(ctx, "tiered.WriteBehind.flush", trace.WithAttributes(
		attribute.String("tiercache.namespace", w.c.cfg.Namespace), attribute.Int("tiercache.keys", len(items))))
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
				w.c.cfg.Logger.WarnContext(ctx, "tiercache: write-behind flush failed; retrying",
					"namespace", w.c.cfg.Namespace, "writes", len(writes), "err", err)
			})
		}
	}()
	return w.cfg.Flush(ctx, writes)
}

// done settles the flushed items' L2 values (a TTL from now on) and acks
// and deletes their entries. A crash before the ack makes the next owner
// flush them again: delivery is at least once.
func (w *WriteBehind[V]) done(ctx context.Context, shard int, items []*wbItem[V]) {
	w.successes.Add(1)
	c := w.c
	now := time.Now()
	var ids []string
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.L2Timeout*5)
	defer cancel()
	_, err := w.rdb.Pipelined(rctx, func(p redis.Pipeliner) error {
		for _, it := range items {
			m := it.latest()
			b := appendFreshEnvelope(nil, c.cfg.Codec.ID(), 0, now.Add(m.ttl), now.Add(m.keep), 0, []byte(m.payload))
			wbPut.Eval(rctx, p, []string{c.l2Key(m.key)}, b, m.id.ms, m.id.seq, max(m.keep.Milliseconds(), 1), "settle")
			for _, m := range it.msgs {
				ids = append(ids, m.sid)
			}
		}
		return nil
	})
	if err != nil {
		c.l2Failed(ctx, "write-behind settle", items[0].latest().key, err)
	}
	for _, it := range items {
		if m := it.latest(); len(m.tags) > 0 {
			_ = c.tagWritten(rctx, m.key, m.tags, m.keep)
		}
	}
	if err := w.ack(rctx, shard, ids); err != nil {
		c.l2Failed(ctx, "write-behind ack", items[0].latest().key, err)
	}
	w.stats.flushed.Add(int64(len(ids)))
}

// ack acknowledges and deletes entries, atomically: the stream keeps only
// what waits for the source, so its length is the queue's.
func (w *WriteBehind[V]) ack(ctx context.Context, shard int, ids []string) error {
	stream := w.streamKey(shard)
	_, err := w.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.XAck(ctx, stream, w.group, ids...)
		p.XDel(ctx, stream, ids...)
		return nil
	})
	return err
}

// deadLetter moves an item's writes to the dead-letter stream and drops its
// pending value from the cache, whose readers then load what the source
// has.
func (w *WriteBehind[V]) deadLetter(ctx context.Context, shard int, it *wbItem[V]) {
	c := w.c
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.L2Timeout*5)
	defer cancel()
	ids := make([]string, 0, len(it.msgs))
	for _, m := range it.msgs {
		err := w.rdb.XAdd(rctx, &redis.XAddArgs{Stream: w.deadKey(), Values: []any{
			"id", m.sid, "shard", shard, "k", m.key, "v", m.payload, "ttl", m.ttl.Milliseconds(),
			"keep", m.keep.Milliseconds(), "attempts", m.attempts, "err", fmt.Sprint(it.failed),
		}}).Err()
		if err != nil {
			w.logFails.Do(func() { c.cfg.Logger.WarnContext(ctx, "tiercache: write-behind dead-letter failed", "err", err) })
			return // left pending: the next owner tries again
		}
		ids = append(ids, m.sid)
	}
	m := it.latest()
	c.cfg.Logger.ErrorContext(ctx, "tiercache: write-behind write moved to the dead-letter stream",
		"namespace", c.cfg.Namespace, "key", m.key, "id", m.sid, "attempts", m.attempts, "stream", w.deadKey(), "err", it.failed)
	if m.key != "" {
		if n, err := wbPut.Run(rctx, w.rdb, []string{c.l2Key(m.key)}, "", m.id.ms, m.id.seq, 0, "drop").Int(); err == nil && n == 1 && !c.isClosed() {
			c.invalidateLocal(m.key)
			_ = c.publish(rctx, m.key)
		}
	}
	if err := w.ack(rctx, shard, ids); err != nil {
		c.l2Failed(ctx, "write-behind ack", m.key, err)
	}
	w.stats.dead.Add(int64(len(ids)))
}

func (w *WriteBehind[V]) instruments(meter metric.Meter) (metric.Registration, error) {
	ns := metric.WithAttributes(attribute.String("namespace", w.c.cfg.Namespace))
	writes, err := meter.Int64ObservableCounter("tiercache.writebehind.writes",
		metric.WithDescription("Write-behind writes by result: appended (acknowledged), flushed (to the source), retried, dead_lettered."))
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
		return metric.WithAttributes(attribute.String("namespace", w.c.cfg.Namespace), attribute.String("result", r))
	}
	appended, flushed, retried, dead := result("appended"), result("flushed"), result("retried"), result("dead_lettered")
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := w.Stats()
		o.ObserveInt64(writes, s.Appended, appended)
		o.ObserveInt64(writes, s.Flushed, flushed)
		o.ObserveInt64(writes, s.Retried, retried)
		o.ObserveInt64(writes, s.DeadLettered, dead)
		o.ObserveInt64(failures, s.FlushErrors, ns)
		o.ObserveInt64(queue, s.QueueLength, ns)
		o.ObserveFloat64(lag, s.Lag.Seconds(), ns)
		return nil
	}, writes, failures, queue, lag)
}

// entryID is a Redis stream entry ID.
type entryID struct{ ms, seq uint64 }

func parseEntryID(s string) (entryID, error) {
	ms, seq, ok := strings.Cut(s, "-")
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return entryID{}, fmt.Errorf("tiered: bad stream entry ID %q", s)
	}
	return entryID{a, b}, nil
}

func (a entryID) less(b entryID) bool { return a.ms < b.ms || (a.ms == b.ms && a.seq < b.seq) }

func sortMsgs(ms []*wbMsg) {
	slices.SortFunc(ms, func(a, b *wbMsg) int {
		switch {
		case a.id.less(b.id):
			return -1
		case b.id.less(a.id):
			return 1
		}
		return 0
	})
}
