package writebehind

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

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
type Config[V any] struct {
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

func (cfg Config[V]) withDefaults() (Config[V], error) {
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
