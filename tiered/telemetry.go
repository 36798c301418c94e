package tiered

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/tiercache/tiercache/internal/observe"
	"github.com/tiercache/tiercache/invalidation"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Stats is a snapshot of a Cache's counters since New.
type Stats struct {
	L1Hits, L1Misses int64
	L2Hits, L2Misses int64
	// L2Errors counts failed L2 calls (refusals of the open breaker too);
	// DecodeErrors, L2 values corrupt, foreign or of another codec (misses).
	L2Errors, DecodeErrors int64
	// Loads counts loader calls; SharedLoads, callers (its leader included)
	// whose miss was answered by a flight other callers shared; LoadErrors,
	// loads that failed with anything but ErrNotFound.
	Loads, SharedLoads, LoadErrors int64
	// L1Items and L1Bytes are what L1 holds now; L1WindowBytes is the
	// adaptive share of L1MaxBytes its admission window has (the rest is
	// ristretto's).
	L1Items, L1Bytes, L1WindowBytes int64
	// Refreshes counts background refreshes started (early, or of a stale
	// value); StaleServed, reads answered with a value past its TTL;
	// StaleOnError, those of them because a refresh failed.
	Refreshes, StaleServed, StaleOnError int64
	// LeaseWaits counts flights that waited for another process's load.
	LeaseWaits int64
	// FencedFills counts fills kept out of L1, and LeasesLost loads kept
	// out of L2, because their key was invalidated in flight.
	FencedFills, LeasesLost int64
	// StaleSkips counts L1 copies not served because the bus was not fresh
	// and they were older than the staleness bound; Flushes, clears of L1
	// (bus resubscriptions and gaps).
	StaleSkips, Flushes int64
	// FailedWrites counts writes that returned ErrL2Unavailable;
	// WriteRetries, retried L2 attempts of writes. OutboxHeld is how many
	// invalidations (keys, tags, write-behind values) wait in the outbox
	// now; OutboxDropped, those it had no room for; OutboxReplays, replays.
	FailedWrites, WriteRetries               int64
	OutboxHeld, OutboxDropped, OutboxReplays int64
	// Breaker is the L2 circuit breaker's state: "closed", "half-open" or
	// "open" ("none" without an L2); BreakerOpens counts its openings.
	Breaker      string
	BreakerOpens int64
	// Bus is the invalidation bus's counters (zero without a bus).
	Bus invalidation.Stats
}

// counters are atomics, read at collection, so hits build no attribute sets.
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

// stripedCounter is the L1 hit counter: a shared atomic would move its
// cache line between cores on every hit, so adds go to a cell picked from
// the key's length and last byte (cheaper than a random pick or a hash).
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

// newInstruments registers the cache's metrics, each with its namespace.
func newInstruments[V any](c *Cache[V], meter metric.Meter) (*instruments, error) {
	ns := attribute.String("namespace", c.cfg.Namespace)
	in := &instruments{attrs: metric.WithAttributes(ns)}
	var err error
	if in.loadDuration, err = meter.Float64Histogram("tiercache.load.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of loader calls.")); err != nil {
		return nil, err
	}
	type S = Stats
	p, str := observe.P[S], attribute.String
	l1, l2 := str("tier", tierL1.String()), str("tier", tierL2.String())
	in.reg, err = observe.Register(meter, c.Stats, []observe.Instrument[S]{
		{Name: "tiercache.hits", Description: "Hits per tier.", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.L1Hits }, l1), p(func(s *S) int64 { return s.L2Hits }, l2)}},
		{Name: "tiercache.misses", Description: "Misses per tier.", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.L1Misses }, l1), p(func(s *S) int64 { return s.L2Misses }, l2)}},
		{Name: "tiercache.l2.errors", Description: "Failed L2 calls (kind=call) and undecodable L2 values (kind=decode).", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.L2Errors }, str("kind", "call")), p(func(s *S) int64 { return s.DecodeErrors }, str("kind", "decode"))}},
		{Name: "tiercache.loads", Description: "Loader calls (result=ok|error), callers served by a shared load (result=shared), and flights that waited for another process's load (result=waited).", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.Loads - s.LoadErrors }, str("result", "ok")),
			p(func(s *S) int64 { return s.LoadErrors }, str("result", "error")),
			p(func(s *S) int64 { return s.SharedLoads }, str("result", "shared")),
			p(func(s *S) int64 { return s.LeaseWaits }, str("result", "waited"))}},
		{Name: "tiercache.breaker.state", Gauge: true, Description: "L2 circuit breaker: 0 closed, 1 half-open, 2 open.", Points: []observe.Point[S]{
			p(func(*S) int64 { return int64(c.counters.breaker.Load()) })}},
		{Name: "tiercache.l1.bytes", Unit: "By", Gauge: true, Description: "Bytes held by L1 (encoded size of values and keys, plus 272 per entry).", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.L1Bytes })}},
		{Name: "tiercache.l1.items", Gauge: true, Description: "Entries held by L1.", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.L1Items })}},
		{Name: "tiercache.l1.window.bytes", Unit: "By", Gauge: true, Description: "The share of the L1 budget that its admission window has now; it adapts to the traffic.", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.L1WindowBytes })}},
		{Name: "tiercache.fenced", Description: "Fills kept out of a tier because their key was invalidated while they were in flight (tier=l1: L1 installs; tier=l2: loads whose L2 lease was lost).", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.FencedFills }, l1), p(func(s *S) int64 { return s.LeasesLost }, l2)}},
		{Name: "tiercache.l1.stale_skips", Description: "L1 copies not served because the invalidation bus was behind its staleness bound and they were older than it.", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.StaleSkips })}},
		{Name: "tiercache.l1.flushes", Description: "Clears of the whole L1.", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.Flushes })}},
		{Name: "tiercache.refreshes", Description: "Background refreshes started: early (XFetch) or of a stale value.", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.Refreshes })}},
		{Name: "tiercache.stale", Description: "Reads answered with a value past its TTL: while it refreshed (reason=revalidate), or because the refresh failed (reason=error).", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.StaleServed - s.StaleOnError }, str("reason", "revalidate")),
			p(func(s *S) int64 { return s.StaleOnError }, str("reason", "error"))}},
		{Name: "tiercache.writes", Description: "Writes (Set, Delete, InvalidateTags, the write strategies) that failed to reach L2 or to invalidate the other processes (result=failed), and the L2 attempts retried (result=retried).", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.FailedWrites }, str("result", "failed")),
			p(func(s *S) int64 { return s.WriteRetries }, str("result", "retried"))}},
		{Name: "tiercache.outbox.held", Gauge: true, Description: "Invalidations this process could not make and holds until Redis answers; while nonzero it reads nothing from L2.", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.OutboxHeld })}},
		{Name: "tiercache.outbox.events", Description: "Outbox replays attempted (event=replay), and invalidations it had no room for (event=dropped): those may leave stale entries in L2 until they expire.", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.OutboxReplays }, str("event", "replay")),
			p(func(s *S) int64 { return s.OutboxDropped }, str("event", "dropped"))}},
	}, ns)
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
