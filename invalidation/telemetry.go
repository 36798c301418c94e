package invalidation

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/internal/observe"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Stats is a snapshot of a Bus's counters since New.
type Stats struct {
	// SentMessages, SentKeys and SentTags count the keys and tags messages
	// this process published, and what they carried; ReceivedMessages,
	// ReceivedKeys and ReceivedTags count other processes' messages it
	// applied (heartbeats included in ReceivedMessages).
	SentMessages, SentKeys, SentTags             int64
	ReceivedMessages, ReceivedKeys, ReceivedTags int64
	// Flushes counts flushes of the local copies, for any reason.
	Flushes int64
	// PublishErrors, ReceiveErrors and Malformed count failures.
	PublishErrors, ReceiveErrors, Malformed int64
	// StaleSpells counts the times Fresh turned false because the bus fell
	// behind its bound or lost its subscription.
	StaleSpells int64
	Fresh       bool
}

type stats struct {
	sentMessages, sentKeys, sentTags             atomic.Int64
	receivedMessages, receivedKeys, receivedTags atomic.Int64
	flushes                                      atomic.Int64
	publishErrors, receiveErrors                 atomic.Int64
	malformed, staleSpells                       atomic.Int64
}

// Stats returns a snapshot of the bus's counters.
func (b *Bus) Stats() Stats {
	s := &b.stats
	return Stats{
		SentMessages: s.sentMessages.Load(), SentKeys: s.sentKeys.Load(), SentTags: s.sentTags.Load(),
		ReceivedMessages: s.receivedMessages.Load(), ReceivedKeys: s.receivedKeys.Load(), ReceivedTags: s.receivedTags.Load(),
		Flushes:       s.flushes.Load(),
		PublishErrors: s.publishErrors.Load(), ReceiveErrors: s.receiveErrors.Load(), Malformed: s.malformed.Load(),
		StaleSpells: s.staleSpells.Load(),
		Fresh:       b.Fresh(),
	}
}

type instruments struct {
	flushes metric.Int64Counter
	echo    metric.Float64Histogram
	attrs   metric.MeasurementOption
	reg     metric.Registration
}

// newInstruments registers the bus's metrics. Counters that the hot paths
// bump are plain atomics read by one callback at collection time.
func newInstruments(b *Bus, m metric.Meter) (*instruments, error) {
	in := &instruments{attrs: metric.WithAttributes(attribute.String("channel", b.cfg.Channel))}
	var err error
	if in.flushes, err = m.Int64Counter("tiercache.invalidation.flushes",
		metric.WithDescription("Flushes of the local copies, by reason")); err != nil {
		return nil, err
	}
	if in.echo, err = m.Float64Histogram("tiercache.invalidation.echo.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from publishing a heartbeat to hearing it back: the bus's own propagation delay"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 2)); err != nil {
		return nil, err
	}
	type S = Stats
	p, str := observe.P[S], attribute.String
	sent, recv := str("direction", "sent"), str("direction", "received")
	in.reg, err = observe.Register(m, b.Stats, []observe.Instrument[S]{
		{Name: "tiercache.invalidation.keys", Description: "Invalidated keys sent to and received from other processes", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.SentKeys }, sent), p(func(s *S) int64 { return s.ReceivedKeys }, recv)}},
		{Name: "tiercache.invalidation.messages", Description: "Invalidation messages sent and received", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.SentMessages }, sent), p(func(s *S) int64 { return s.ReceivedMessages }, recv)}},
		{Name: "tiercache.invalidation.errors", Description: "Bus failures, by kind: publish, receive, malformed", Points: []observe.Point[S]{
			p(func(s *S) int64 { return s.PublishErrors }, str("kind", "publish")),
			p(func(s *S) int64 { return s.ReceiveErrors }, str("kind", "receive")),
			p(func(s *S) int64 { return s.Malformed }, str("kind", "malformed"))}},
		{Name: "tiercache.invalidation.fresh", Gauge: true, Description: "1 while every invalidation older than the staleness bound has been applied", Points: []observe.Point[S]{
			p(func(s *S) int64 { return boolInt(s.Fresh) })}},
	}, attribute.String("channel", b.cfg.Channel))
	if err != nil {
		return nil, err
	}
	return in, nil
}

func (in *instruments) recordFlush(reason string) {
	in.flushes.Add(context.Background(), 1, in.attrs, metric.WithAttributes(attribute.String("reason", reason)))
}

func (in *instruments) recordEcho(d time.Duration) {
	in.echo.Record(context.Background(), d.Seconds(), in.attrs)
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
