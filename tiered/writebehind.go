package tiered

import (
	"cmp"
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
	"github.com/tiercache/tiercache/internal/l1"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

// Write-behind keeps each write in a Redis stream until the source has it.
//
// Keys are spread over Shards streams ("{<ns>#wb:<shard>}"), each with one
// consumer group. At most one process flushes a shard at a time: it holds
// the shard's lock ("{<ns>#wb:<shard>}:owner", in the stream's hash slot),
// renewed before every call to Flush, and acknowledges entries only while
// it still holds it. A consumer group alone would hand one key's writes to
// several consumers, which could apply them out of order; the lock makes a
// shard a queue with a single reader, as a Kafka partition is, and the
// group still keeps what that reader was handed and has not acked (its
// pending entries), so that the next owner claims them with XAUTOCLAIM.
//
// A flusher that meets any Redis failure after a Flush (settling L2,
// acknowledging, dead-lettering) stops and gives its shard up: the next
// owner replays what was not acknowledged, oldest first, so a key's writes
// are never applied out of order, only some of them twice.
//
// The cache's copy of a written value lives in L2 in an envelope that
// carries the write's entry ID (flagWriteID): with no expiry while it is
// pending, so that neither a TTL nor a volatile-* eviction policy drops it
// before the source has it, and with its TTL once flushed. wbPut compares
// IDs, so that no older write, however late, overwrites a newer one.

// wbPut sets KEYS[1] to ARGV[1] for ARGV[4] ms (0: no expiry) unless the
// value there carries a newer write's entry ID than ARGV[2], ARGV[3] (ms,
// seq), or, in mode ARGV[5] "put", the same one: a value already flushed
// is not made pending again. It returns 1 if it wrote, 0 if not. The ID
// is read from the envelope's write ID extension (see envelope.go).
var wbPut = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'string' and t ~= 'none' then
  redis.call('DEL', KEYS[1])
end
local cur = redis.call('GET', KEYS[1])
if cur and #cur >= 32 and string.byte(cur, 1) == 199 and bit.band(string.byte(cur, 4), 16) ~= 0 then
  local ms, seq = struct.unpack('>I8>I8', cur, 17)
  local ams, aseq = tonumber(ARGV[2]), tonumber(ARGV[3])
  if ms > ams or (ms == ams and (seq > aseq or (seq == aseq and ARGV[5] == 'put'))) then
    return 0
  end
end
if ARGV[4] == '0' then
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

// wbAck acknowledges and deletes the entries ARGV[3..] of the stream
// KEYS[1] for group ARGV[2] if consumer ARGV[1] holds the shard's lock
// KEYS[2] ("" skips the check), and returns -1 if it does not. Deleting
// them keeps the stream's length the queue's length.
var wbAck = redis.NewScript(`
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
redis.call('XACK', KEYS[1], ARGV[2], unpack(ARGV, 3))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 3))`)

// ErrNotQueued reports a WriteBehind.Set that Redis did not acknowledge:
// the write is not queued for the source, and the cache is unchanged.
var ErrNotQueued = errors.New("tiered: write-behind write not queued")

// ErrNotReplicated reports a WriteBehind.Set whose write fewer than
// WriteBehindConfig.Replicas replicas confirmed in time. It comes wrapped
// with ErrNotQueued: the write is not acknowledged, though the master may
// still flush it.
var ErrNotReplicated = errors.New("tiered: write-behind write not on enough replicas")

// errLockLost reports a shard whose lock another process holds now.
var errLockLost = errors.New("tiered: write-behind shard lock lost")

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
	// streams are empty, or one key's writes could be applied out of order:
	// NewWriteBehind records it in Redis ("<ns>#wb:shards") and returns
	// ErrShardsChanged for another while writes are queued. Default: 8.
	Shards int

	// BatchSize bounds the writes read from a shard and handed to Flush at
	// once. Default: 100.
	BatchSize int

	// MaxAttempts is how many times a write may fail on its own (in a batch
	// of one) while the source accepts other writes before it moves to the
	// dead-letter stream "<ns>#wb:dead". A failure counts only if the
	// source accepted a Flush call that began after the key's previous
	// attempt and before this one, so an outage of the source, which
	// fails every write, moves nothing there, nor do calls in flight when
	// it begins or ends.
	// Default: 10.
	MaxAttempts int

	// RetryBackoff is the wait after a failed batch, doubling with every
	// failure up to MaxRetryBackoff. Defaults: 100 ms, 5 s.
	RetryBackoff, MaxRetryBackoff time.Duration

	// FlushTimeout bounds a Flush call. Default: 5 s.
	FlushTimeout time.Duration

	// LockTTL is how long a shard's lock outlives its holder: after a
	// crash, another process takes the shard over within about LockTTL.
	// It must exceed twice FlushTimeout and twice MaxRetryBackoff, since
	// the lock is renewed before every Flush and after every backoff.
	// Default: 3 × FlushTimeout.
	LockTTL time.Duration

	// PollInterval is how often an idle shard is read. Default: 50 ms.
	PollInterval time.Duration

	// Consumer names this process in the consumer groups. Default:
	// "<hostname>:<pid>:<random>", unique per WriteBehind.
	Consumer string

	// Replicas is how many replicas must hold a write before Set
	// acknowledges it (Redis's WAIT), so that a failover, which promotes a
	// replica, keeps every acknowledged write. Default: 1 on a Redis
	// Cluster; elsewhere 1 if the master has a replica when NewWriteBehind
	// asks, else 0. Negative: 0, the write is acknowledged once the master
	// has it.
	Replicas int

	// ReplicaTimeout bounds the wait for Replicas; a Set that does not get
	// them in time is retried, and then fails with ErrNotReplicated.
	// Default: 100 ms.
	ReplicaTimeout time.Duration
}

// WriteBehind is the write-behind strategy over a Cache: Set acknowledges
// a write once Redis holds it, and flushers in any process apply it to the
// source later, in batches. See NewWriteBehind.
type WriteBehind[V any] struct {
	c       *Cache[V]
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // rdb, if it is one
	cfg     WriteBehindConfig[V]
	group   string
	streams []string // by shard

	closed   atomic.Bool
	draining chan struct{}   // closed by Close: flushers stop once their shard is empty
	ctx      context.Context // cancelled when Close's context ends: flushers stop at once
	cancel   context.CancelFunc
	mgr      sync.WaitGroup
	workers  sync.WaitGroup
	owned    []atomic.Bool

	// calls numbers the Flush calls as they start; okStart is the highest
	// number of a call the source accepted. See MaxAttempts and failed.
	calls, okStart atomic.Int64
	stats          struct {
		appended, flushed, retried, dead, failures atomic.Int64
		reread, unreplicated, unsettled            atomic.Int64
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
	cluster, _ := c.l2.rdb.(*redis.ClusterClient)
	w := &WriteBehind[V]{
		c: c, rdb: c.l2.rdb, cluster: cluster, cfg: cfg, group: "tiercache",
		streams:  streamKeys(c.cfg.Namespace, cfg.Shards, cluster != nil),
		draining: make(chan struct{}),
		owned:    make([]atomic.Bool, cfg.Shards),
		logFails: rate.Sometimes{Interval: time.Second},
		noLock:   noLock,
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	if err := w.checkShards(); err != nil {
		w.cancel()
		return nil, err
	}
	w.checkEvictionPolicy()
	if w.cfg.Replicas == 0 {
		w.cfg.Replicas = w.defaultReplicas()
	}
	w.cfg.Replicas = max(w.cfg.Replicas, 0)
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

// bound bounds one of the flushers' Redis calls: five L2 timeouts, since
// nobody waits on a flusher, and a slow Redis should delay its work rather
// than fail it.
func (w *WriteBehind[V]) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 5*w.c.cfg.L2Timeout)
}

// ErrShardsChanged reports a NewWriteBehind whose Shards differs from the
// count that the namespace's queued writes were made with: its flushers
// would read other streams, and those writes would wait forever (or a
// key's writes be applied out of order). Drain the writes with the old
// count first; with every stream empty, a new count is taken.
var ErrShardsChanged = errors.New("tiered: write-behind Shards changed while writes are queued")

// checkShards records the namespace's shard count in Redis, or checks it
// against the one recorded, and refuses a change while any stream of the
// old count, or (on a cluster) of a version before the streams were spread
// over the masters, holds writes. Best effort when Redis does not answer:
// the check is then skipped, with a warning.
func (w *WriteBehind[V]) checkShards() error {
	ctx, cancel := w.bound(w.ctx)
	defer cancel()
	ns := w.c.cfg.Namespace
	key := ns + "#wb:shards"
	warn := func(err error) error {
		w.c.cfg.Logger.Warn("tiercache: cannot check write-behind's shard count against Redis; every process must use the same Shards",
			"namespace", ns, "err", err)
		return nil
	}
	old, err := w.rdb.Get(ctx, key).Int()
	switch {
	case errors.Is(err, redis.Nil):
		old = w.cfg.Shards
	case err != nil:
		return warn(err)
	}
	var queued []string
	if old != w.cfg.Shards {
		queued = append(queued, streamKeys(ns, old, w.cluster != nil)...)
	}
	if w.cluster != nil {
		queued = append(queued, streamKeys(ns, max(old, w.cfg.Shards), false)...)
	}
	lens := make([]*redis.IntCmd, len(queued))
	if _, err := w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range queued {
			lens[i] = p.XLen(ctx, k)
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return warn(err)
	}
	var n int64
	for _, l := range lens {
		n += l.Val()
	}
	if n > 0 {
		return fmt.Errorf("%w: %d writes wait in the streams of %d shards (or of an older version's stream names), and this process has Shards %d",
			ErrShardsChanged, n, old, w.cfg.Shards)
	}
	if err := w.rdb.Set(ctx, key, w.cfg.Shards, 0).Err(); err != nil {
		return warn(err)
	}
	return nil
}

// checkEvictionPolicy warns if Redis may evict keys without a TTL, pending
// values among them. Best effort: CONFIG may be disabled or renamed.
func (w *WriteBehind[V]) checkEvictionPolicy() {
	ctx, cancel := w.bound(w.ctx)
	defer cancel()
	cfg, err := w.rdb.ConfigGet(ctx, "maxmemory-policy").Result()
	if p := cfg["maxmemory-policy"]; err == nil && strings.HasPrefix(p, "allkeys-") {
		w.c.cfg.Logger.Warn("tiercache: Redis may evict pending write-behind values: their readers would then load the source's older value until the flush; use noeviction or a volatile-* maxmemory-policy",
			"namespace", w.c.cfg.Namespace, "maxmemory-policy", p)
	}
}

// defaultReplicas is WriteBehindConfig.Replicas's default.
func (w *WriteBehind[V]) defaultReplicas() int {
	if w.cluster != nil {
		return 1
	}
	ctx, cancel := w.bound(w.ctx)
	defer cancel()
	info, err := w.rdb.Info(ctx, "replication").Result()
	if err != nil {
		w.c.cfg.Logger.Warn("tiercache: cannot tell whether Redis has replicas; write-behind acknowledges writes without waiting for one (set WriteBehindConfig.Replicas)",
			"namespace", w.c.cfg.Namespace, "err", err)
		return 0
	}
	if strings.Contains(info, "connected_slaves:0") || !strings.Contains(info, "connected_slaves:") {
		return 0
	}
	return 1
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
	if cfg.ReplicaTimeout == 0 {
		cfg.ReplicaTimeout = 100 * time.Millisecond
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
	if cfg.BatchSize < 1 || cfg.BatchSize > 5000 || cfg.MaxAttempts < 1 {
		bad("BatchSize %d must be 1 to 5000 and MaxAttempts %d positive", cfg.BatchSize, cfg.MaxAttempts)
	}
	if cfg.RetryBackoff < 0 || cfg.MaxRetryBackoff < cfg.RetryBackoff || cfg.FlushTimeout < 0 || cfg.PollInterval < 0 || cfg.ReplicaTimeout < 0 {
		bad("durations must be positive, MaxRetryBackoff at least RetryBackoff")
	}
	if cfg.LockTTL <= 2*cfg.FlushTimeout || cfg.LockTTL <= 2*cfg.MaxRetryBackoff {
		// The lock is renewed before every Flush and after every backoff.
		bad("LockTTL %v must exceed twice FlushTimeout %v and twice MaxRetryBackoff %v", cfg.LockTTL, cfg.FlushTimeout, cfg.MaxRetryBackoff)
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
	if w.closed.Load() || c.isClosed() {
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
		sid, err = w.append(ctx, key, payload, ttl, keep)
		return err
	})
	if err != nil {
		c.l2Failed(ctx, "write-behind append", key, err)
		c.counters.failedWrites.Add(1)
		return fmt.Errorf("%w: %q: %w: %w", ErrNotQueued, key, ErrL2Unavailable, err)
	}
	w.stats.appended.Add(1)
	id, err := parseEntryID(sid)
	if err != nil {
		c.l1.Delete(key)
		return nil // acknowledged; Redis made the ID, so this cannot be, but the flush settles L2 anyway
	}
	b := appendWriteEnvelope(make([]byte, 0, headerSize+writeIDExt+len(payload)), c.cfg.Codec.ID(), id, time.Time{}, time.Time{}, payload)
	wrote := true
	l2key := c.l2Key(key)
	// On a failure too, v goes into L1: it is the newest write this
	// process knows of, and the outbox puts it into L2 once Redis answers.
	install := func() {
		c.fence.invalidate(key)
		c.l1.Set(key, &entry[V]{Value: item[V]{v: v, filled: time.Now().UnixNano()}, Cost: l1.EntryCost(key, len(b))}, c.l1TTL(0))
	}
	l2err := c.change(wctx, func(ctx context.Context) error {
		return c.l2.must(ctx, func(ctx context.Context) error {
			n, err := wbPut.Run(ctx, w.rdb, []string{l2key}, b, id.ms, id.seq, 0, "put").Int()
			wrote = n == 1
			return err
		})
	}, nil, nil, map[string]heldPut{key: {b: b, id: id}}, install)
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
		err = fmt.Errorf("tiered: write-behind closed before flushing everything: %w", ctx.Err())
	}
	w.cancel()
	if !w.cfg.NoFlusher {
		if n, perr := w.leftPending(); perr != nil {
			err = errors.Join(err, fmt.Errorf("%w: could not count what is left: %w", ErrNotFlushed, perr))
		} else if n > 0 {
			err = errors.Join(err, fmt.Errorf("%w: %d left on this process; the next owner of their shards flushes them", ErrNotFlushed, n))
		}
	}
	return errors.Join(err, w.reg.Unregister())
}

// ErrNotFlushed reports writes that a closing WriteBehind leaves in the
// streams for another process to flush.
var ErrNotFlushed = errors.New("tiered: write-behind writes not flushed")

// leftPending counts the writes handed to this process's consumer and not
// acknowledged, over every shard.
func (w *WriteBehind[V]) leftPending() (int64, error) {
	ctx, cancel := w.bound(context.Background())
	defer cancel()
	cmds := make([]*redis.XInfoConsumersCmd, w.cfg.Shards)
	// Each command's error is judged below: a shard never written has no
	// stream (or no group), which is no failure.
	_, _ = w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for s := range cmds {
			cmds[s] = p.XInfoConsumers(ctx, w.streamKey(s), w.group)
		}
		return nil
	})
	var n int64
	var errs []error
	for _, cmd := range cmds {
		cs, err := cmd.Result()
		switch {
		case err != nil && (strings.HasPrefix(err.Error(), "ERR no such key") || strings.HasPrefix(err.Error(), "NOGROUP")):
		case err != nil:
			errs = append(errs, err)
		}
		for _, c := range cs {
			if c.Name == w.cfg.Consumer {
				n += c.Pending
			}
		}
	}
	if len(errs) > 0 {
		return n, fmt.Errorf("count pending writes: %w", errors.Join(errs...))
	}
	return n, nil
}

// WriteBehindStats is a snapshot of a WriteBehind's counters.
type WriteBehindStats struct {
	// Appended counts writes acknowledged by Set in this process; Flushed
	// counts writes its flushers applied to the source (superseded writes
	// of a key included), Retried those they wrote again after a failure,
	// DeadLettered those they moved to the dead-letter stream, and
	// FlushErrors the failed Flush calls. Reread counts writes its
	// flushers found pending on them that a read whose reply was lost had
	// handed over. Unreplicated counts appends that fewer than Replicas
	// replicas confirmed in time (each is retried), and Unsettled flushed
	// writes whose L2 value could not be settled (each is flushed again).
	Appended, Flushed, Retried, DeadLettered, FlushErrors, Reread int64
	Unreplicated, Unsettled                                       int64
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
		DeadLettered: w.stats.dead.Load(), FlushErrors: w.stats.failures.Load(), Reread: w.stats.reread.Load(),
		Unreplicated: w.stats.unreplicated.Load(), Unsettled: w.stats.unsettled.Load(),
		QueueLength: w.stats.queue.Load(), Lag: time.Duration(w.stats.lagMs.Load()) * time.Millisecond,
	}
	for i := range w.owned {
		if w.owned[i].Load() {
			s.Shards++
		}
	}
	return s
}

// append adds one write to its shard's stream and, with Replicas, waits
// until that many replicas have it. WAIT counts the replicas that have
// every write made on its own connection, so the two go in one pipeline
// to the stream's master.
func (w *WriteBehind[V]) append(ctx context.Context, key string, payload []byte, ttl, keep time.Duration) (string, error) {
	stream := w.streamKey(w.shard(key))
	args := &redis.XAddArgs{Stream: stream, Values: []any{"k", key, "v", payload, "ttl", ttl.Milliseconds(), "keep", keep.Milliseconds()}}
	if w.cfg.Replicas == 0 {
		var sid string
		err := w.c.l2.must(ctx, func(ctx context.Context) (err error) {
			sid, err = w.rdb.XAdd(ctx, args).Result()
			return err
		})
		return sid, err
	}
	ctx, cancel := context.WithTimeout(ctx, w.c.cfg.L2Timeout+w.cfg.ReplicaTimeout)
	defer cancel()
	var node redis.Cmdable = w.rdb
	if w.cluster != nil {
		// A node's client has none of the cluster's hooks, nor its
		// handling of MOVED: a failure reloads the slot map here, and the
		// retry goes where it now says.
		n, err := w.cluster.MasterForKey(ctx, stream)
		if err != nil {
			w.cluster.ReloadState(ctx)
			return "", err
		}
		node = n
	}
	var add *redis.StringCmd
	var wait *redis.Cmd
	_, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
		add = p.XAdd(ctx, args)
		wait = p.Do(ctx, "wait", w.cfg.Replicas, w.cfg.ReplicaTimeout.Milliseconds())
		return nil
	})
	if err != nil {
		if w.cluster != nil {
			w.cluster.ReloadState(ctx)
		}
		return "", err
	}
	if n, _ := wait.Int64(); n < int64(w.cfg.Replicas) {
		w.stats.unreplicated.Add(1)
		return "", fmt.Errorf("%w: %d of %d within %v", ErrNotReplicated, n, w.cfg.Replicas, w.cfg.ReplicaTimeout)
	}
	return add.Val(), nil
}

func (w *WriteBehind[V]) shard(key string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(w.cfg.Shards))
}

// streamKey is shard's stream; its hash tag puts the shard's lock in the
// same Redis Cluster slot, for wbAck.
func (w *WriteBehind[V]) streamKey(shard int) string { return w.streams[shard] }

// streamKeys names the shards' streams: "{<ns>#wb:<shard>}", and on a
// cluster "{<ns>#wb:<shard>.<n>}", with the first n that puts shard s in
// the s-th of Shards equal ranges of hash slots. Their slots are then
// spread evenly, and so over the masters, whatever the namespace: with
// the plain names, 8 shards would all land on two of three masters about
// once in 9 namespaces, and one master's death would stall more of them.
func streamKeys(ns string, shards int, cluster bool) []string {
	keys := make([]string, shards)
	for s := range keys {
		base := ns + "#wb:" + strconv.Itoa(s)
		if !cluster {
			keys[s] = "{" + base + "}"
			continue
		}
		lo, hi := s*clusterSlots/shards, (s+1)*clusterSlots/shards
		for n := 0; ; n++ {
			tag := base + "." + strconv.Itoa(n)
			if slot := keySlot(tag); lo <= slot && slot < hi {
				keys[s] = "{" + tag + "}"
				break
			}
		}
	}
	return keys
}

const clusterSlots = 16384

// keySlot is Redis Cluster's hash slot of a key without a hash tag:
// CRC16 (XMODEM) mod 16384.
func keySlot(key string) int {
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % clusterSlots
}

func (w *WriteBehind[V]) lockKey(shard int) string { return w.streamKey(shard) + ":owner" }

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
func (w *WriteBehind[V]) takeShards() {
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
func (w *WriteBehind[V]) sample() {
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

// acquire takes shard's lock if no process holds it, or takes it back if
// this one still does (after a worker stopped on an error).
func (w *WriteBehind[V]) acquire(shard int) bool {
	if w.noLock {
		return true
	}
	ctx, cancel := w.bound(w.ctx)
	defer cancel()
	v, err := leaseOrGet.Run(ctx, w.rdb, []string{w.lockKey(shard)}, w.cfg.Consumer, w.cfg.Consumer, w.cfg.LockTTL.Milliseconds()).Result()
	return err == nil && v == int64(1)
}

// renew extends the shard's lock; errLockLost if this process no longer
// holds it.
func (w *WriteBehind[V]) renew(ctx context.Context, shard int) error {
	if w.noLock {
		return nil
	}
	ctx, cancel := w.bound(ctx)
	defer cancel()
	n, err := renewLock.Run(ctx, w.rdb, []string{w.lockKey(shard)}, w.cfg.Consumer, w.cfg.LockTTL.Milliseconds()).Int()
	switch {
	case err != nil:
		return fmt.Errorf("renew the shard lock: %w", err)
	case n != 1:
		return errLockLost
	}
	return nil
}

// wbMsg is one write read from a shard.
type wbMsg struct {
	id        entryID
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
func (w *WriteBehind[V]) work(shard int) {
	defer w.workers.Done()
	ctx := w.ctx
	log := w.c.cfg.Logger.With("namespace", w.c.cfg.Namespace, "shard", shard, "consumer", w.cfg.Consumer)
	defer func() {
		rctx, cancel := w.bound(context.Background())
		// Released only if still ours, so that another process takes the
		// shard over at once instead of after LockTTL; and before the shard
		// is marked free here, or this process's next flusher for it could
		// take the lock back and then see this release delete it.
		_ = leaseRelease.Run(rctx, w.rdb, []string{w.lockKey(shard)}, w.cfg.Consumer).Err()
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
				newest = max(newest, m.id.ms)
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
func (w *WriteBehind[V]) read(ctx context.Context, shard, n int, held []*wbMsg) ([]*wbMsg, error) {
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
	return msg
}

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
func (w *WriteBehind[V]) flushHeld(ctx context.Context, shard int, held []*wbMsg) ([]*wbMsg, error) {
	var items []*wbItem[V]
	byKey := make(map[string]*wbItem[V], len(held))
	for _, m := range held {
		if m.bad != nil {
			if err := w.deadLetter(ctx, shard, &wbItem[V]{msgs: []*wbMsg{m}, failed: m.bad}); err != nil {
				return held, err
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
	var batch []*wbItem[V]
	for _, it := range items {
		if err := w.c.cfg.Codec.Unmarshal([]byte(it.latest().payload), &it.value); err != nil {
			it.failed = fmt.Errorf("decode: %w", err)
			if err := w.deadLetter(ctx, shard, it); err != nil {
				return held, err
			}
			continue
		}
		batch = append(batch, it)
	}
	if len(batch) == 0 {
		return nil, nil
	}
	err := w.write(ctx, shard, batch)
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
		// Key by key, so that one poison write does not hold back the rest.
		for _, it := range batch {
			if ctx.Err() != nil {
				it.failed = ctx.Err()
				continue
			}
			err := w.write(ctx, shard, []*wbItem[V]{it})
			if errors.Is(err, errLockLost) {
				return held, err
			}
			if it.failed = err; err == nil {
				unsettled, err := w.done(ctx, shard, []*wbItem[V]{it})
				if err != nil {
					return held, err
				}
				it.unsettled = len(unsettled) > 0
			}
		}
	}
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
				return held, err
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
func (w *WriteBehind[V]) write(ctx context.Context, shard int, items []*wbItem[V]) (err error) {
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

// done settles the flushed items' L2 values (their TTL from now on) and
// acks and deletes the entries of those it settled. It returns the items
// it could not settle, which stay pending in the shard and held by the
// caller, to be flushed again (delivery is at least once) and settled:
// on a cluster, a dead master fails only the keys it serves, and the
// others go on. If the ack fails, the shard's own node is failing, and
// the caller gives the shard up.
func (w *WriteBehind[V]) done(ctx context.Context, shard int, items []*wbItem[V]) ([]*wbItem[V], error) {
	c := w.c
	now := time.Now()
	rctx, cancel := w.bound(context.WithoutCancel(ctx))
	defer cancel()
	settles := make([]*redis.Cmd, len(items))
	_, _ = w.rdb.Pipelined(rctx, func(p redis.Pipeliner) error {
		for i, it := range items {
			m := it.latest()
			b := appendWriteEnvelope(nil, c.cfg.Codec.ID(), m.id, now.Add(m.ttl), now.Add(m.keep), []byte(m.payload))
			settles[i] = wbPut.Eval(rctx, p, []string{c.l2Key(m.key)}, b, m.id.ms, m.id.seq, max(m.keep.Milliseconds(), 1), "settle")
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
			c.cfg.Logger.WarnContext(ctx, "tiercache: write-behind could not settle flushed values in L2; they are flushed again",
				"namespace", c.cfg.Namespace, "shard", shard, "keys", len(left), "err", first)
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
func (w *WriteBehind[V]) ack(ctx context.Context, shard int, ids []string) error {
	me := w.cfg.Consumer
	if w.noLock {
		me = ""
	}
	args := make([]any, 0, 2+len(ids))
	args = append(args, me, w.group)
	for _, id := range ids {
		args = append(args, id)
	}
	n, err := wbAck.Run(ctx, w.rdb, []string{w.streamKey(shard), w.lockKey(shard)}, args...).Int()
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
func (w *WriteBehind[V]) deadLetter(ctx context.Context, shard int, it *wbItem[V]) error {
	c := w.c
	rctx, cancel := w.bound(context.WithoutCancel(ctx))
	defer cancel()
	m := it.latest()
	if m.key != "" {
		gone := appendWriteEnvelope(nil, c.cfg.Codec.ID(), m.id, time.UnixMilli(1), time.UnixMilli(1), nil)
		n, err := wbPut.Run(rctx, w.rdb, []string{c.l2Key(m.key)}, gone, m.id.ms, m.id.seq, max(c.cfg.TTL.Milliseconds(), 1), "drop").Int()
		if err != nil {
			return fmt.Errorf("drop the dead letter's value: %w", err)
		}
		if n == 1 && !c.isClosed() {
			c.invalidateLocal(m.key)
			_ = c.announce(rctx, true, []string{m.key}, nil)
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
	c.cfg.Logger.ErrorContext(ctx, "tiercache: write-behind write moved to the dead-letter stream",
		"namespace", c.cfg.Namespace, "key", m.key, "id", m.sid, "attempts", m.attempts, "stream", w.deadKey(), "err", it.failed)
	if err := w.ack(rctx, shard, ids); err != nil {
		return err
	}
	w.stats.dead.Add(int64(len(ids)))
	return nil
}

func (w *WriteBehind[V]) instruments(meter metric.Meter) (metric.Registration, error) {
	ns := metric.WithAttributes(attribute.String("namespace", w.c.cfg.Namespace))
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
		return metric.WithAttributes(attribute.String("namespace", w.c.cfg.Namespace), attribute.String("result", r))
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
