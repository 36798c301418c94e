package tiered

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/eko/gocache/lib/v4/store"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Config configures a Cache. The zero value of every field but Namespace
// (required with an L2) means the default written beside it.
type Config struct {
	// Redis is the L2 client: a *redis.Client, *redis.ClusterClient or a
	// Sentinel failover client (a *redis.Ring is refused). Nil, with Store
	// nil too, gives an L1-only cache. Close does not close it; on a
	// ClusterClient, New installs a hook that reloads the slot map after a
	// connection error (see docs/operations.md).
	//
	// WARNING: go-redis ignores context deadlines unless the client's
	// ContextTimeoutEnabled option is set, and by default retries a dead
	// Redis for over a second (docs/architecture.md). NewRedisClient sets
	// options suited to a cache.
	Redis redis.UniversalClient

	// Store replaces the default L2 store (gocache's Redis store over Redis)
	// with any gocache store. It must return gocache's store.NotFound for a
	// missing key and string or []byte values.
	Store store.StoreInterface

	// Namespace prefixes every L2 key ("Namespace:key"), so that applications
	// sharing one Redis never read each other's entries, and names the
	// invalidation channel ("tiercache:inv:Namespace"). Required with an L2.
	Namespace string

	// DisableInvalidation turns off the invalidation bus, on by default with
	// Redis: writes then no longer evict the other processes' L1 copies,
	// which live out their L1TTL. See docs/consistency.md.
	DisableInvalidation bool

	// StalenessBound is the longest that another process may serve an L1
	// copy after a write to its key returned (see docs/consistency.md):
	// while the bus cannot prove every older invalidation applied, L1
	// copies older than the bound are not served. New waits up to half of
	// it (at most a second) for the bus to be ready. Default: 2 seconds.
	StalenessBound time.Duration

	// InvalidationWindow is how long the bus waits after a write's
	// invalidation for more, to send them in one message: fewer messages
	// with many writers and replicas (docs/operations.md), at the cost of
	// that much latency on every write. Default: 0, which sends at once and
	// still batches what is published while a message is in flight.
	InvalidationWindow time.Duration

	// HotKeys, if positive (at most 1000), makes the cache keep the HotKeys
	// keys it reads most, sampled, and add them every HotKeysInterval to a
	// sorted set in Redis that Cache.HotKeys reads, so that a new replica
	// can warm up with what the cluster reads now. It needs Redis.
	// Default: 0, off.
	HotKeys         int
	HotKeysInterval time.Duration // default: 30 seconds

	// LeaseTTL is how long a load may hold its key's L2 lease; a load that
	// outlives it still answers its callers, but does not write L2. A lease
	// ending never, or more than LeaseTTL (plus a second for clocks) from
	// now, is garbage that a miss replaces, so every process of a namespace
	// should use the same LeaseTTL. Default: 10 seconds.
	LeaseTTL time.Duration

	// TTL is how long an entry is fresh. Default: 1 hour.
	TTL time.Duration

	// StaleTTL is how long past its TTL an entry may still be served, at
	// once, while one refresh (GetOrLoad's loader, cluster-wide) runs in the
	// background: stale-while-revalidate. Default: 0, none.
	StaleTTL time.Duration

	// MaxStale is how long past its TTL an entry may be served when
	// refreshing it fails (the loader or L2): stale-if-error. The failure
	// is counted. L2 keeps entries for TTL plus the longer of StaleTTL and
	// MaxStale. Default: 0, none.
	MaxStale time.Duration

	// EarlyRefresh is XFetch's β: GetOrLoad refreshes a hot key in the
	// background shortly before its TTL ends, at random, earlier for slower
	// loads and larger β, so that its readers never wait on a load.
	// Default: 1; negative: off.
	EarlyRefresh float64

	// L1TTL bounds how long a process keeps its own copy; an L1 copy never
	// outlives the L2 entry it came from. Default: 1 minute, or TTL plus
	// the longer of StaleTTL and MaxStale if less.
	L1TTL time.Duration

	// L1MaxBytes is the L1 budget, counted as the encoded size of values and
	// keys plus 272 bytes per entry (its overhead), so that it bounds memory
	// also for small values. L1's frequency sketches add about 12 % of it.
	// Default: 64 MiB.
	L1MaxBytes int64

	// Jitter shortens each TTL by a random fraction of up to Jitter, so
	// that entries written together do not expire together; it never
	// lengthens one, so a TTL stays a bound. Default: 0.1; negative: none.
	Jitter float64

	// NegativeTTL is how long a loader's ErrNotFound is remembered in both
	// tiers. Default: 30 seconds; negative: not remembered.
	NegativeTTL time.Duration

	// Codec encodes values for L2. Default: JSONCodec.
	Codec Codec

	// MaxKeyBytes limits key length. Default: 1024.
	MaxKeyBytes int

	// MaxValueBytes limits an encoded value. Default: 1 MiB.
	MaxValueBytes int

	// L2Timeout bounds every L2 call; a publish of invalidations gets a
	// heartbeat period (StalenessBound/4) if longer, since a lost one
	// flushes every other process's L1. Default: 250 ms, above a loaded
	// machine's stalls (docs/architecture.md); a frozen Redis costs each
	// call that much until the breaker opens.
	L2Timeout time.Duration

	// WriteTimeout bounds the L2 steps of a write (Set, Delete,
	// InvalidateTags, WriteThrough, WriteAround, WriteBehind.Set): its L2
	// change and invalidation are retried, from 5 ms apart, until they
	// succeed or WriteTimeout has passed, even if the caller's context is
	// done. A change that still fails is kept in this process's outbox for
	// when Redis answers, and the write returns an error for which
	// errors.Is(err, ErrL2Unavailable) holds; while the outbox's last replay
	// has failed, writes fail at once. See docs/consistency.md. Default: 1
	// second; negative: one attempt.
	WriteTimeout time.Duration

	// BreakerFailures consecutive L2 failures spanning at least two
	// L2Timeouts (so that one stall cannot) open the circuit breaker; L2 is
	// then skipped for BreakerCooldown and probed with one call. Defaults:
	// 5 failures, 1 second.
	BreakerFailures int
	BreakerCooldown time.Duration

	// LoadTimeout bounds a loader call, which serves every caller waiting
	// for the key and so ignores their contexts (each stops waiting at its
	// own). Default: no bound but the loader's own.
	LoadTimeout time.Duration

	// Strict makes the L2 failures of reads visible to callers (wrapped in
	// the returned error) instead of only counted and logged. Writes always
	// return theirs.
	Strict bool

	// Clock is the time the cache judges freshness, TTLs, stale windows and
	// leases by, so that tests can move it; nil: the system clock. Redis's
	// expiries, the breaker and the waits keep their own clocks.
	Clock Clock

	// Logger receives structured logs. Default: slog.Default().
	Logger *slog.Logger

	// TracerProvider and MeterProvider default to the global OpenTelemetry
	// providers, which record nothing until the application installs an SDK.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

// Limits without which a bad input could cost unbounded memory.
const (
	defaultMaxKeyBytes   = 1024
	defaultMaxValueBytes = 1 << 20
	maxMaxValueBytes     = 512 << 20 // Redis's own limit on a string value.
)

// withDefaults returns cfg with its defaults filled in, and an error naming
// every field that cannot work.
func (cfg Config) withDefaults() (Config, error) {
	cfg.TTL = cmp.Or(cfg.TTL, time.Hour)
	// Long enough to serve stale copies from L1, which an L1-only cache needs.
	cfg.L1TTL = cmp.Or(cfg.L1TTL, min(time.Minute, cfg.TTL+max(cfg.StaleTTL, cfg.MaxStale)))
	cfg.L1MaxBytes = cmp.Or(cfg.L1MaxBytes, 64<<20)
	cfg.Jitter = cmp.Or(cfg.Jitter, 0.1)
	cfg.NegativeTTL = cmp.Or(cfg.NegativeTTL, 30*time.Second)
	cfg.Codec = cmp.Or[Codec](cfg.Codec, JSONCodec{})
	cfg.MaxKeyBytes = cmp.Or(cfg.MaxKeyBytes, defaultMaxKeyBytes)
	cfg.MaxValueBytes = cmp.Or(cfg.MaxValueBytes, defaultMaxValueBytes)
	cfg.L2Timeout = cmp.Or(cfg.L2Timeout, 250*time.Millisecond)
	cfg.WriteTimeout = cmp.Or(cfg.WriteTimeout, time.Second)
	cfg.BreakerFailures = cmp.Or(cfg.BreakerFailures, 5)
	cfg.BreakerCooldown = cmp.Or(cfg.BreakerCooldown, time.Second)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	cfg.StalenessBound = cmp.Or(cfg.StalenessBound, 2*time.Second)
	cfg.LeaseTTL = cmp.Or(cfg.LeaseTTL, 10*time.Second)
	cfg.HotKeysInterval = cmp.Or(cfg.HotKeysInterval, 30*time.Second)
	cfg.EarlyRefresh = cmp.Or(cfg.EarlyRefresh, 1)
	return cfg, cfg.validate()
}

// validate reports every bad setting of cfg, defaults applied, at once.
func (cfg Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if cfg.TTL < 0 || cfg.L1TTL < 0 || cfg.L2Timeout < 0 || cfg.BreakerCooldown < 0 || cfg.LoadTimeout < 0 || cfg.LeaseTTL < 0 {
		bad("durations must not be negative (TTL, L1TTL, L2Timeout, BreakerCooldown, LoadTimeout, LeaseTTL)")
	}
	if cfg.HotKeys < 0 || cfg.HotKeys > 1000 || cfg.HotKeysInterval < 0 {
		// The summary scans its counters to evict: keep it small.
		bad("HotKeys %d must be 0 to 1000 and HotKeysInterval %v not negative", cfg.HotKeys, cfg.HotKeysInterval)
	}
	if cfg.HotKeys > 0 && cfg.Redis == nil {
		bad("HotKeys needs Redis, where the hot keys are kept")
	}
	if cfg.InvalidationWindow < 0 || cfg.InvalidationWindow >= cfg.StalenessBound/4 {
		bad("InvalidationWindow %v must be 0 or more and under a quarter of StalenessBound %v", cfg.InvalidationWindow, cfg.StalenessBound)
	}
	if cfg.StaleTTL < 0 || cfg.MaxStale < 0 {
		bad("StaleTTL %v and MaxStale %v must not be negative", cfg.StaleTTL, cfg.MaxStale)
	}
	if cfg.StalenessBound < 10*time.Millisecond {
		bad("StalenessBound %v must be at least 10ms", cfg.StalenessBound)
	}
	if cfg.L1MaxBytes < 0 {
		bad("L1MaxBytes %d is negative", cfg.L1MaxBytes)
	}
	if cfg.Jitter >= 1 {
		bad("Jitter %v must be below 1", cfg.Jitter)
	}
	if cfg.MaxKeyBytes < 0 || cfg.MaxValueBytes < 0 || cfg.MaxValueBytes > maxMaxValueBytes {
		bad("MaxKeyBytes %d and MaxValueBytes %d must be positive, values at most %d", cfg.MaxKeyBytes, cfg.MaxValueBytes, maxMaxValueBytes)
	}
	if cfg.BreakerFailures < 0 {
		bad("BreakerFailures %d is negative", cfg.BreakerFailures)
	}
	if id := cfg.Codec.ID(); id == 0 {
		bad("Codec ID 0 is reserved")
	}
	if _, ring := cfg.Redis.(*redis.Ring); ring {
		// A Ring's lost node moves its keys (leases and locks included) to
		// others, and its pub/sub reaches one node's subscribers only.
		bad("Redis is a *redis.Ring, which tiercache does not support: use Redis Cluster (see docs/operations.md)")
	}
	if cfg.Redis != nil || cfg.Store != nil {
		switch {
		case cfg.Namespace == "":
			bad("Namespace is required with an L2 (Redis or Store)")
		case len(cfg.Namespace) > 128 || strings.ContainsFunc(cfg.Namespace, isSpaceOrControl) || strings.Contains(cfg.Namespace, "#"):
			// '#' separates tag sets ("Namespace#tag:t") from values.
			bad("Namespace %q must be at most 128 bytes without '#', spaces or control characters", cfg.Namespace)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("tiered: bad Config: %w", errors.Join(errs...))
	}
	return nil
}

func isSpaceOrControl(r rune) bool { return r <= ' ' || r == 0x7f }

// Clock is a source of the time (see Config.Clock).
type Clock interface {
	Now() time.Time
}
