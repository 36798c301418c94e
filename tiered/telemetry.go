package tiered

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/tiercache/tiercache/invalidation"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Stats is a snapshot of a Cache's counters since New.
type Stats struct {
	L1Hits, L1Misses int64
	L2Hits, L2Misses int64
	// L2Errors counts failed L2 calls, including those refused while the
	// breaker was open; DecodeErrors counts L2 values that were corrupt,
	// foreign or written by another codec (each also a miss).
	L2Errors, DecodeErrors int64
	// Loads counts loader calls; SharedLoads counts callers whose miss was
	// answered by a flight (L2 read or load) that other callers shared, the
	// one that ran it included; LoadErrors counts loads that failed with
	// anything but ErrNotFound.
	Loads, SharedLoads, LoadErrors int64
	// L1Items and L1Bytes are what L1 holds now. L1WindowBytes is the share
	// of L1MaxBytes that L1's admission window has now (the rest is
	// ristretto's); it adapts to the traffic.
	L1Items, L1Bytes, L1WindowBytes int64
	// Refreshes counts background refreshes started (early, by XFetch, or
	// of a stale value). StaleServed counts reads answered with a value
	// past its TTL; StaleOnError counts those answered so because a refresh
	// failed (the loader or L2).
	Refreshes, StaleServed, StaleOnError int64
	// LeaseWaits counts flights that found another process loading their
	// key and waited for its value instead of loading.
	LeaseWaits int64
	// FencedFills counts L2 reads and loads kept out of L1 because their
	// key was invalidated while they were in flight; LeasesLost counts
	// loaded values kept out of L2 for the same reason.
	FencedFills, LeasesLost int64
	// StaleSkips counts L1 copies not served because the invalidation bus
	// was not fresh and they were older than the staleness bound; Flushes
	// counts clears of L1 (bus resubscriptions, gaps, InvalidateTags
	// without L2).
	StaleSkips, Flushes int64
	// FailedWrites counts writes that returned ErrL2Unavailable, and
	// WriteRetries the L2 attempts they and the others retried. OutboxHeld
	// is how many invalidations (keys, tags, write-behind values) wait in
	// the outbox for Redis now, OutboxDropped how many did not fit in it,
	// and OutboxReplays counts the attempts to make them.
	FailedWrites, WriteRetries               int64
	OutboxHeld, OutboxDropped, OutboxReplays int64
	// Breaker is the L2 circuit breaker's state: "closed", "half-open" or
	// "open" ("none" without an L2); BreakerOpens counts its openings.
	Breaker      string
	BreakerOpens int64
	// Bus is the invalidation bus's counters (zero without a bus).
	Bus invalidation.Stats
}

// counters are bumped with plain atomics; OpenTelemetry reads them in a
// callback at collection time, so the hot path builds no attribute sets.
type counters struct {
	l1Hits                stripedCounter
	l1Misses              atomic.Int64
	l2Hits, l2Misses      atomic.Int64
	l2Errors, decodeErrs  atomic.Int64
	loads, shared, loadEr atomic.Int64
	fenced, leaseLost     atomic.Int64
	leaseWaits, refreshes atomic.Int64
	staleServed           atomic.Int64
	staleOnError          atomic.Int64
	staleSkips, flushes   atomic.Int64
	failedWrites          atomic.Int64
	writeRetries          atomic.Int64
	breaker               atomic.Int32 // gobreaker.State
	breakerOpens          atomic.Int64
}

// stripedCounter is a counter for the L1 hit path. One atomic shared by all
// cores makes its cache line move between cores on every hit, so adds go to
// one of several cells on their own cache lines, picked from the key (its
// last byte and length: about a nanosecond, where a random pick or a real
// hash costs more than the rest of the hit path). Hits on one key share a
// cell, as they share ristretto's shard lock anyway. Reads sum the cells.
type stripedCounter struct {
	_     [128]byte // keeps the first cell off the lines of the fields before it, which the hit path reads
	cells [16]struct {
		n atomic.Int64
		_ [120]byte // a cell per 128 bytes: no false sharing, even with adjacent-line prefetch
	}
}

func (s *stripedCounter) add(key string) {
	i := uint(len(key))
	if len(key) > 0 {
		i += uint(key[len(key)-1])
	}
	s.cells[i%uint(len(s.cells))].n.Add(1)
}

func (s *stripedCounter) load() int64 {
	var sum int64
	for i := range s.cells {
		sum += s.cells[i].n.Load()
	}
	return sum
}

type instruments struct {
	loadDuration metric.Float64Histogram
	reg          metric.Registration
	attrs        metric.MeasurementOption
}

// newInstruments registers the cache's metrics with meter. Every instrument
// carries the namespace, so several caches in one process stay apart.
func newInstruments[V any](c *Cache[V], meter metric.Meter) (*instruments, error) {
	ns := attribute.String("namespace", c.cfg.Namespace)
	in := &instruments{attrs: metric.WithAttributes(ns)}
	var err error
	if in.loadDuration, err = meter.Float64Histogram("tiercache.load.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of loader calls.")); err != nil {
		return nil, err
	}
	hits, err := meter.Int64ObservableCounter("tiercache.hits", metric.WithDescription("Hits per tier."))
	if err != nil {
		return nil, err
	}
	misses, err := meter.Int64ObservableCounter("tiercache.misses", metric.WithDescription("Misses per tier."))
	if err != nil {
		return nil, err
	}
	l2Errors, err := meter.Int64ObservableCounter("tiercache.l2.errors",
		metric.WithDescription("Failed L2 calls (kind=call) and undecodable L2 values (kind=decode)."))
	if err != nil {
		return nil, err
	}
	loads, err := meter.Int64ObservableCounter("tiercache.loads",
		metric.WithDescription("Loader calls (result=ok|error), callers served by a shared load (result=shared), and flights that waited for another process's load (result=waited)."))
	if err != nil {
		return nil, err
	}
	breaker, err := meter.Int64ObservableGauge("tiercache.breaker.state",
		metric.WithDescription("L2 circuit breaker: 0 closed, 1 half-open, 2 open."))
	if err != nil {
		return nil, err
	}
	l1Bytes, err := meter.Int64ObservableGauge("tiercache.l1.bytes", metric.WithUnit("By"),
		metric.WithDescription("Bytes held by L1 (encoded size of values and keys, plus 272 per entry)."))
	if err != nil {
		return nil, err
	}
	l1Items, err := meter.Int64ObservableGauge("tiercache.l1.items", metric.WithDescription("Entries held by L1."))
	if err != nil {
		return nil, err
	}
	l1Window, err := meter.Int64ObservableGauge("tiercache.l1.window.bytes", metric.WithUnit("By"),
		metric.WithDescription("The share of the L1 budget that its admission window has now; it adapts to the traffic."))
	if err != nil {
		return nil, err
	}
	fenced, err := meter.Int64ObservableCounter("tiercache.fenced",
		metric.WithDescription("Fills kept out of a tier because their key was invalidated while they were in flight (tier=l1: L1 installs; tier=l2: loads whose L2 lease was lost)."))
	if err != nil {
		return nil, err
	}
	staleSkips, err := meter.Int64ObservableCounter("tiercache.l1.stale_skips",
		metric.WithDescription("L1 copies not served because the invalidation bus was behind its staleness bound and they were older than it."))
	if err != nil {
		return nil, err
	}
	flushes, err := meter.Int64ObservableCounter("tiercache.l1.flushes", metric.WithDescription("Clears of the whole L1."))
	if err != nil {
		return nil, err
	}
	refreshes, err := meter.Int64ObservableCounter("tiercache.refreshes",
		metric.WithDescription("Background refreshes started: early (XFetch) or of a stale value."))
	if err != nil {
		return nil, err
	}
	stale, err := meter.Int64ObservableCounter("tiercache.stale",
		metric.WithDescription("Reads answered with a value past its TTL: while it refreshed (reason=revalidate), or because the refresh failed (reason=error)."))
	if err != nil {
		return nil, err
	}
	writes, err := meter.Int64ObservableCounter("tiercache.writes",
		metric.WithDescription("Writes (Set, Delete, InvalidateTags, the write strategies) that failed to reach L2 or to invalidate the other processes (result=failed), and the L2 attempts retried (result=retried)."))
	if err != nil {
		return nil, err
	}
	outboxHeld, err := meter.Int64ObservableGauge("tiercache.outbox.held",
		metric.WithDescription("Invalidations this process could not make and holds until Redis answers; while nonzero it reads nothing from L2."))
	if err != nil {
		return nil, err
	}
	outbox, err := meter.Int64ObservableCounter("tiercache.outbox.events",
		metric.WithDescription("Outbox replays attempted (event=replay), and invalidations it had no room for (event=dropped): those may leave stale entries in L2 until they expire."))
	if err != nil {
		return nil, err
	}
	with := func(kv ...attribute.KeyValue) metric.ObserveOption {
		return metric.WithAttributes(append([]attribute.KeyValue{ns}, kv...)...)
	}
	var (
		l1 = with(attribute.String("tier", tierL1.String()))
		l2 = with(attribute.String("tier", tierL2.String()))
		// The option values are built once: building attribute sets on
		// every collection would be waste.
		call, decode       = with(attribute.String("kind", "call")), with(attribute.String("kind", "decode"))
		ok, failed, shared = with(attribute.String("result", "ok")), with(attribute.String("result", "error")), with(attribute.String("result", "shared"))
		waited             = with(attribute.String("result", "waited"))
		revalidate         = with(attribute.String("reason", "revalidate"))
		writeFailed        = with(attribute.String("result", "failed"))
		writeRetried       = with(attribute.String("result", "retried"))
		replayed, dropped  = with(attribute.String("event", "replay")), with(attribute.String("event", "dropped"))
		onError            = with(attribute.String("reason", "error"))
		plain              = with()
	)
	in.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := c.Stats()
		o.ObserveInt64(hits, s.L1Hits, l1)
		o.ObserveInt64(hits, s.L2Hits, l2)
		o.ObserveInt64(misses, s.L1Misses, l1)
		o.ObserveInt64(misses, s.L2Misses, l2)
		o.ObserveInt64(l2Errors, s.L2Errors, call)
		o.ObserveInt64(l2Errors, s.DecodeErrors, decode)
		o.ObserveInt64(loads, s.Loads-s.LoadErrors, ok)
		o.ObserveInt64(loads, s.LoadErrors, failed)
		o.ObserveInt64(loads, s.SharedLoads, shared)
		o.ObserveInt64(loads, s.LeaseWaits, waited)
		o.ObserveInt64(breaker, int64(c.counters.breaker.Load()), plain)
		o.ObserveInt64(l1Bytes, s.L1Bytes, plain)
		o.ObserveInt64(l1Items, s.L1Items, plain)
		o.ObserveInt64(l1Window, s.L1WindowBytes, plain)
		o.ObserveInt64(fenced, s.FencedFills, l1)
		o.ObserveInt64(fenced, s.LeasesLost, l2)
		o.ObserveInt64(staleSkips, s.StaleSkips, plain)
		o.ObserveInt64(flushes, s.Flushes, plain)
		o.ObserveInt64(refreshes, s.Refreshes, plain)
		o.ObserveInt64(stale, s.StaleServed-s.StaleOnError, revalidate)
		o.ObserveInt64(stale, s.StaleOnError, onError)
		o.ObserveInt64(writes, s.FailedWrites, writeFailed)
		o.ObserveInt64(writes, s.WriteRetries, writeRetried)
		o.ObserveInt64(outboxHeld, s.OutboxHeld, plain)
		o.ObserveInt64(outbox, s.OutboxReplays, replayed)
		o.ObserveInt64(outbox, s.OutboxDropped, dropped)
		return nil
	}, hits, misses, l2Errors, loads, breaker, l1Bytes, l1Items, l1Window, fenced, staleSkips, flushes, refreshes, stale, writes, outboxHeld, outbox)
	if err != nil {
		return nil, err
	}
	return in, nil
}

func (in *instruments) recordLoad(ctx context.Context, d time.Duration) {
	in.loadDuration.Record(ctx, d.Seconds(), in.attrs)
}

func breakerName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateClosed:
		return "closed"
	case gobreaker.StateHalfOpen:
		return "half-open"
	case gobreaker.StateOpen:
		return "open"
	}
	return "unknown"
}
