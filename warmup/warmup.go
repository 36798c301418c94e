package warmup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/tiercache/tiercache/tiered"
)

// Source returns the keys to warm.
type Source func(ctx context.Context) ([]string, error)

// FromSlice warms keys.
func FromSlice(keys []string) Source {
	return func(context.Context) ([]string, error) { return keys, nil }
}

// FromReader warms the keys in r, one per line; blank lines are skipped.
// Lines are read to the end before warm-up starts.
func FromReader(r io.Reader) Source {
	return func(ctx context.Context) ([]string, error) {
		var keys []string
		s := bufio.NewScanner(r)
		for s.Scan() {
			if err := ctx.Err(); err != nil {
				return keys, err
			}
			if k := strings.TrimSpace(s.Text()); k != "" {
				keys = append(keys, k)
			}
		}
		if err := s.Err(); err != nil {
			return keys, fmt.Errorf("warmup: reading keys: %w", err)
		}
		return keys, nil
	}
}

// FromRedisSet warms the members of the Redis set key.
func FromRedisSet(rdb redis.UniversalClient, key string) Source {
	return func(ctx context.Context) ([]string, error) {
		keys, err := rdb.SMembers(ctx, key).Result()
		if err != nil {
			return nil, fmt.Errorf("warmup: keys from set %q: %w", key, err)
		}
		return keys, nil
	}
}

// FromRedisSortedSet warms the n highest-scored members of the Redis
// sorted set key (all of them for n ≤ 0), highest first.
func FromRedisSortedSet(rdb redis.UniversalClient, key string, n int) Source {
	return func(ctx context.Context) ([]string, error) {
		stop := int64(n) - 1
		if n <= 0 {
			stop = -1
		}
		keys, err := rdb.ZRevRange(ctx, key, 0, stop).Result()
		if err != nil {
			return nil, fmt.Errorf("warmup: keys from sorted set %q: %w", key, err)
		}
		return keys, nil
	}
}

// FromHotKeys warms the n keys the cluster reads most now, as the caches
// of its replicas record them (tiered.Config.HotKeys): a new replica warms
// with what is hot, not with a list written last month.
func FromHotKeys[V any](c *tiered.Cache[V], n int) Source {
	return func(ctx context.Context) ([]string, error) {
		keys, err := c.HotKeys(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("warmup: %w", err)
		}
		return keys, nil
	}
}

// Config configures a warm-up. The zero value warms from L2 only.
type Config[V any] struct {
	// LoadMany loads keys missing from L2, a batch at a time; Load loads
	// one. With neither, keys missing from L2 stay cold. LoadMany wins when
	// both are set.
	LoadMany tiered.LoadManyFunc[V]
	Load     tiered.LoadFunc[V]

	// BatchSize is how many keys one pipelined L2 read, and one LoadMany
	// call, take. Default: 500.
	BatchSize int

	// Concurrency caps the loader calls in flight. Default: 4.
	Concurrency int

	// Rate limits loader calls per second (a LoadMany call counts once),
	// with bursts of Burst. Default: no limit.
	Rate  rate.Limit
	Burst int

	// FailOnLoadError ends the warm-up at the first failed load, with an
	// error. Default: failures are counted and warm-up goes on.
	FailOnLoadError bool

	// Progress, if set, is called every ProgressEvery and at the end.
	Progress      func(Progress)
	ProgressEvery time.Duration // default: 2 seconds

	// Tracker, if set, follows the warm-up, for a readiness endpoint.
	Tracker *Tracker

	// Logger receives a line every ProgressEvery and at the end.
	// Default: slog.Default().
	Logger *slog.Logger

	// TracerProvider defaults to the global OpenTelemetry provider.
	TracerProvider trace.TracerProvider
}

// Progress is how far a warm-up has got.
type Progress struct {
	Total, Done int
	Elapsed     time.Duration
	// ETA estimates the time left from the rate so far (0 when unknown).
	ETA time.Duration
}

// Report is what a warm-up did.
type Report struct {
	Total int
	// FromCache counts keys found in L2 (or already in L1); Loaded counts
	// keys the loader returned; NotFound those it said do not exist;
	// Failed those whose load failed; Skipped those not tried (no loader,
	// cancellation, or FailOnLoadError).
	FromCache, Loaded, NotFound, Failed, Skipped int
	Duration                                     time.Duration
}

// counters are the report's numbers while the warm-up runs.
type counters struct {
	fromCache, loaded, notFound, failed atomic.Int64
}

func (n *counters) done() int {
	return int(n.fromCache.Load() + n.loaded.Load() + n.notFound.Load() + n.failed.Load())
}

// Run warms c with the keys from src and reports what it did. It returns
// when every key is warm or has failed, or ctx ends; then it returns the
// report so far with ctx's error. Loads in flight when ctx ends run on in
// the cache (they serve its other callers too) but are not waited for:
// a retry right away may find them still running.
func Run[V any](ctx context.Context, c *tiered.Cache[V], src Source, cfg Config[V]) (rep Report, err error) {
	start := time.Now()
	cfg = withDefaults(cfg)
	ctx, span := cfg.TracerProvider.Tracer("github.com/tiercache/tiercache/warmup").Start(ctx, "warmup.Run")
	defer span.End()

	keys, err := src(ctx)
	if err != nil {
		// Readiness must not wait forever on a warm-up that cannot start.
		cfg.Tracker.begin(0, &counters{})
		cfg.Tracker.finish()
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return Report{Duration: time.Since(start)}, err
	}
	keys = dedupe(keys)
	var n counters
	progress := func() Progress {
		p := Progress{Total: len(keys), Done: n.done(), Elapsed: time.Since(start)}
		if p.Done > 0 && p.Done < p.Total {
			p.ETA = time.Duration(float64(p.Elapsed) / float64(p.Done) * float64(p.Total-p.Done))
		}
		return p
	}
	cfg.Tracker.begin(len(keys), &n)
	stopReports := reportEvery(cfg, progress)

	err = warm(ctx, c, keys, cfg, &n)

	stopReports()
	rep = Report{
		Total: len(keys), FromCache: int(n.fromCache.Load()), Loaded: int(n.loaded.Load()),
		NotFound: int(n.notFound.Load()), Failed: int(n.failed.Load()), Duration: time.Since(start),
	}
	rep.Skipped = rep.Total - n.done()
	cfg.Tracker.finish()
	if cfg.Progress != nil {
		cfg.Progress(progress())
	}
	cfg.Logger.Info("tiercache: warm-up finished", "total", rep.Total, "from_cache", rep.FromCache, "loaded", rep.Loaded,
		"not_found", rep.NotFound, "failed", rep.Failed, "skipped", rep.Skipped, "duration", rep.Duration, "err", err)
	span.SetAttributes(attribute.Int("warmup.total", rep.Total), attribute.Int("warmup.from_cache", rep.FromCache),
		attribute.Int("warmup.loaded", rep.Loaded), attribute.Int("warmup.not_found", rep.NotFound),
		attribute.Int("warmup.failed", rep.Failed), attribute.Int("warmup.skipped", rep.Skipped))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return rep, err
}

// warm reads every batch from L2 and hands what is missing to the loader.
func warm[V any](ctx context.Context, c *tiered.Cache[V], keys []string, cfg Config[V], n *counters) error {
	limiter := rate.NewLimiter(rate.Inf, 0)
	if cfg.Rate > 0 {
		limiter = rate.NewLimiter(cfg.Rate, max(cfg.Burst, 1))
	}
	sem := make(chan struct{}, cfg.Concurrency)
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// launch runs one loader call under the cap and the rate limit.
	launch := func(f func(ctx context.Context) error) bool {
		select {
		case sem <- struct{}{}:
		case <-lctx.Done():
			return false
		}
		if err := limiter.Wait(lctx); err != nil {
			// The rate limit cannot be kept within ctx's deadline: stop,
			// and say so, rather than skip keys silently.
			<-sem
			if lctx.Err() == nil {
				fail(fmt.Errorf("rate limit: %w", err))
				cancel()
			}
			return false
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(lctx); err != nil && cfg.FailOnLoadError {
				fail(err)
				cancel()
			}
		}()
		return true
	}
	hasLoader := cfg.LoadMany != nil || cfg.Load != nil
	// L2 reads run Concurrency batches at a time too: each is one round
	// trip, and overlapping them is most of the speed of a warm-up.
	reads := make(chan struct{}, cfg.Concurrency)
	var rwg sync.WaitGroup
	for i := 0; i < len(keys) && lctx.Err() == nil; i += cfg.BatchSize {
		batch := keys[i:min(i+cfg.BatchSize, len(keys))]
		select {
		case reads <- struct{}{}:
		case <-lctx.Done():
			continue
		}
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			got, _ := c.GetMany(lctx, batch) // L2 down: nothing found, the loader does it all
			<-reads                          // L2 reads go on while this batch waits for loaders
			n.fromCache.Add(int64(len(got)))
			if !hasLoader {
				return
			}
			var missing []string
			for _, k := range batch {
				if _, ok := got[k]; !ok {
					missing = append(missing, k)
				}
			}
			if len(missing) == 0 {
				return
			}
			if cfg.LoadMany != nil {
				launch(func(ctx context.Context) error { return loadMany(ctx, c, missing, cfg.LoadMany, n) })
				return
			}
			for _, k := range missing {
				if !launch(func(ctx context.Context) error { return loadOne(ctx, c, k, cfg.Load, n) }) {
					return
				}
			}
		}()
	}
	rwg.Wait()
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("warmup: %w", firstErr)
	}
	return ctx.Err()
}

func loadMany[V any](ctx context.Context, c *tiered.Cache[V], keys []string, load tiered.LoadManyFunc[V], n *counters) error {
	got, err := c.GetOrLoadMany(ctx, keys, load)
	n.loaded.Add(int64(len(got)))
	if err != nil {
		if ctx.Err() == nil { // keys a cancelled warm-up did not wait for are Skipped
			n.failed.Add(int64(len(keys) - len(got)))
		}
		return err
	}
	n.notFound.Add(int64(len(keys) - len(got)))
	return nil
}

func loadOne[V any](ctx context.Context, c *tiered.Cache[V], key string, load tiered.LoadFunc[V], n *counters) error {
	_, err := c.GetOrLoad(ctx, key, load)
	switch {
	case errors.Is(err, tiered.ErrNotFound):
		n.notFound.Add(1)
		return nil
	case err != nil && ctx.Err() != nil:
		return err // cancelled: Skipped
	case err != nil:
		n.failed.Add(1)
		return err
	}
	n.loaded.Add(1)
	return nil
}

// reportEvery logs and reports progress every cfg.ProgressEvery until the
// returned func is called.
func reportEvery[V any](cfg Config[V], progress func() Progress) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(cfg.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p := progress()
				rate := float64(p.Done) / max(p.Elapsed.Seconds(), 1e-9)
				cfg.Logger.Info("tiercache: warming up", "done", p.Done, "total", p.Total,
					"keys_per_second", int(rate), "eta", p.ETA.Round(time.Second))
				if cfg.Progress != nil {
					cfg.Progress(p)
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func withDefaults[V any](cfg Config[V]) Config[V] {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 500
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.ProgressEvery <= 0 {
		cfg.ProgressEvery = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	return cfg
}

func dedupe(keys []string) []string {
	seen := make(map[string]struct{}, len(keys))
	out := keys[:0:0]
	for _, k := range keys {
		if _, dup := seen[k]; !dup && k != "" {
			seen[k] = struct{}{}
			out = append(out, k)
		}
	}
	return out
}
