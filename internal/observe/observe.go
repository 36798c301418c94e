// Package observe registers OpenTelemetry observable instruments that read
// a component's counters from one snapshot per collection: the hot paths
// bump plain atomics and build no attribute sets, and the table of
// instruments is data rather than a callback to keep in step with it.
//
//	reg, err := observe.Register(meter, b.Stats, []observe.Instrument[Stats]{{
//		Name: "tiercache.invalidation.keys", Description: "Keys sent and received",
//		Points: []observe.Point[Stats]{
//			{Value: func(s *Stats) int64 { return s.SentKeys }, Attrs: []attribute.KeyValue{sent}},
//			{Value: func(s *Stats) int64 { return s.ReceivedKeys }, Attrs: []attribute.KeyValue{received}},
//		},
//	}}, attribute.String("channel", ch))
package observe

import (
	"context"
	"slices"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Instrument is a counter (or, if Gauge, a gauge) with one reading per
// point. Unit is optional.
type Instrument[S any] struct {
	Name, Unit, Description string
	Gauge                   bool
	Points                  []Point[S]
}

// Point is one attribute set of an instrument and how to read its value
// from a snapshot.
type Point[S any] struct {
	Value func(*S) int64
	Attrs []attribute.KeyValue
}

// P is a Point, written short for tables.
func P[S any](value func(*S) int64, attrs ...attribute.KeyValue) Point[S] {
	return Point[S]{Value: value, Attrs: attrs}
}

// Register creates the instruments on m and one callback that takes a
// snapshot and observes every point, each with the common attributes too.
func Register[S any](m metric.Meter, snapshot func() S, ins []Instrument[S], common ...attribute.KeyValue) (metric.Registration, error) {
	type reading struct {
		inst  metric.Int64Observable
		value func(*S) int64
		opt   metric.ObserveOption
	}
	var (
		readings []reading
		insts    []metric.Observable
	)
	for _, in := range ins {
		inst, err := create(m, in)
		if err != nil {
			return nil, err
		}
		insts = append(insts, inst)
		for _, p := range in.Points {
			// Built once: attribute sets built on every collection would be waste.
			opt := metric.WithAttributes(append(slices.Clone(common), p.Attrs...)...)
			readings = append(readings, reading{inst, p.Value, opt})
		}
	}
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := snapshot()
		for _, r := range readings {
			o.ObserveInt64(r.inst, r.value(&s), r.opt)
		}
		return nil
	}, insts...)
}

func create[S any](m metric.Meter, in Instrument[S]) (metric.Int64Observable, error) {
	desc, unit := metric.WithDescription(in.Description), metric.WithUnit(in.Unit)
	if in.Gauge {
		return m.Int64ObservableGauge(in.Name, desc, unit)
	}
	return m.Int64ObservableCounter(in.Name, desc, unit)
}
