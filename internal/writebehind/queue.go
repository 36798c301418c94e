package writebehind

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/clock"
	"github.com/tiercache/tiercache/internal/l2"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

// Host is what a Queue needs of the cache it writes behind.
type Host struct {
	Namespace string
	Redis     redis.UniversalClient
	Timeout   time.Duration // of one Redis call (the cache's L2Timeout)
	TTL       time.Duration // of a value whose write was given up
	CodecID   uint8
	Unmarshal func(data []byte, v any) error
	Logger    *slog.Logger
	Tracer    trace.Tracer
	Meter     metric.Meter
	// Evict drops key from every process's L1, after a given-up write's
	// pending value left L2.
	Evict func(ctx context.Context, key string)
	// Clock dates the envelopes of flushed values; nil: the system clock.
	// Stream entry IDs are Redis's time, and stay so.
	Clock clock.Clock
	// Locks are the shard locks; nil: Redis locks owned by Config.Consumer.
	Locks Locks
}

// Queue is the write-behind queue of one namespace: Append acknowledges a
// write once Redis holds it, and flushers in any process apply it to the
// source later, in batches.
type Queue[V any] struct {
	host    Host
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // rdb, if it is one
	cfg     Config[V]
	group   string
	streams []string // by shard
	locks   Locks

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
}

// New returns the queue of host's namespace and, unless cfg.NoFlusher,
// starts its flushers; Close stops them.
func New[V any](host Host, cfg Config[V]) (*Queue[V], error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	cluster, _ := host.Redis.(*redis.ClusterClient)
	w := &Queue[V]{
		host: host, rdb: host.Redis, cluster: cluster, cfg: cfg, group: "tiercache",
		streams:  l2.StreamKeys(host.Namespace, cfg.Shards, cluster != nil),
		locks:    host.Locks,
		draining: make(chan struct{}),
		owned:    make([]atomic.Bool, cfg.Shards),
		logFails: rate.Sometimes{Interval: time.Second},
	}
	if w.locks == nil {
		w.locks = redisLocks{rdb: host.Redis, owner: cfg.Consumer, ttl: cfg.LockTTL}
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
	if w.reg, err = w.instruments(host.Meter); err != nil {
		return nil, fmt.Errorf("tiered: write-behind metrics: %w", err)
	}
	w.mgr.Add(1)
	go w.manage()
	return w, nil
}

func (w *Queue[V]) now() time.Time {
	if w.host.Clock == nil {
		return time.Now()
	}
	return w.host.Clock.Now()
}

// Streams returns the names of the shards' streams.
func (w *Queue[V]) Streams() []string { return w.streams }

// Closed reports whether Close has begun.
func (w *Queue[V]) Closed() bool { return w.closed.Load() }

// Appended counts one write acknowledged to its writer.
func (w *Queue[V]) Appended() { w.stats.appended.Add(1) }

// bound bounds one of the flushers' Redis calls: five L2 timeouts, since
// nobody waits on a flusher, and a slow Redis should delay its work rather
// than fail it.
func (w *Queue[V]) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 5*w.host.Timeout)
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
func (w *Queue[V]) checkShards() error {
	ctx, cancel := w.bound(w.ctx)
	defer cancel()
	ns := w.host.Namespace
	key := l2.ShardsKey(ns)
	warn := func(err error) error {
		w.host.Logger.Warn("tiercache: cannot check write-behind's shard count against Redis; every process must use the same Shards",
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
		queued = append(queued, l2.StreamKeys(ns, old, w.cluster != nil)...)
	}
	if w.cluster != nil {
		queued = append(queued, l2.StreamKeys(ns, max(old, w.cfg.Shards), false)...)
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
func (w *Queue[V]) checkEvictionPolicy() {
	ctx, cancel := w.bound(w.ctx)
	defer cancel()
	cfg, err := w.rdb.ConfigGet(ctx, "maxmemory-policy").Result()
	if p := cfg["maxmemory-policy"]; err == nil && strings.HasPrefix(p, "allkeys-") {
		w.host.Logger.Warn("tiercache: Redis may evict pending write-behind values: their readers would then load the source's older value until the flush; use noeviction or a volatile-* maxmemory-policy",
			"namespace", w.host.Namespace, "maxmemory-policy", p)
	}
}

// defaultReplicas is WriteBehindConfig.Replicas's default.
func (w *Queue[V]) defaultReplicas() int {
	if w.cluster != nil {
		return 1
	}
	ctx, cancel := w.bound(w.ctx)
	defer cancel()
	info, err := w.rdb.Info(ctx, "replication").Result()
	if err != nil {
		w.host.Logger.Warn("tiercache: cannot tell whether Redis has replicas; write-behind acknowledges writes without waiting for one (set WriteBehindConfig.Replicas)",
			"namespace", w.host.Namespace, "err", err)
		return 0
	}
	if strings.Contains(info, "connected_slaves:0") || !strings.Contains(info, "connected_slaves:") {
		return 0
	}
	return 1
}

// Close stops accepting writes and lets this process's flushers empty
// their shards until ctx ends; what is left stays in the streams for
// another process (or the next start) to flush. It returns an error if
// writes this process was handed are left unflushed (ctx ended, or Redis
// or the source failed): they are flushed by the next owner of their
// shard, within LockTTL. Close the WriteBehind before its Cache.
func (w *Queue[V]) Close(ctx context.Context) error {
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
func (w *Queue[V]) leftPending() (int64, error) {
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

// Stats is a snapshot of a WriteBehind's counters.
type Stats struct {
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
func (w *Queue[V]) Stats() Stats {
	s := Stats{
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

// Append adds one write to its shard's stream and, with Replicas, waits
// until that many replicas have it. WAIT counts the replicas that have
// every write made on its own connection, so the two go in one pipeline
// to the stream's master.
func (w *Queue[V]) Append(ctx context.Context, key string, payload []byte, ttl, keep time.Duration) (string, error) {
	stream := w.streamKey(w.shard(key))
	args := &redis.XAddArgs{Stream: stream, Values: []any{"k", key, "v", payload, "ttl", ttl.Milliseconds(), "keep", keep.Milliseconds()}}
	if w.cfg.Replicas == 0 {
		ctx, cancel := context.WithTimeout(ctx, w.host.Timeout)
		defer cancel()
		return w.rdb.XAdd(ctx, args).Result()
	}
	ctx, cancel := context.WithTimeout(ctx, w.host.Timeout+w.cfg.ReplicaTimeout)
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

func (w *Queue[V]) shard(key string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(w.cfg.Shards))
}

// streamKey is shard's stream; its hash tag puts the shard's lock in the
// same Redis Cluster slot, for l2.WBAck.
func (w *Queue[V]) streamKey(shard int) string { return w.streams[shard] }

func (w *Queue[V]) deadKey() string { return l2.DeadKey(w.host.Namespace) }
