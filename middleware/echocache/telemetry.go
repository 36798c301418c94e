package echocache

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// outcome is what the middleware did with a request or a response.
type outcome int

const (
	outHit         outcome = iota // served fresh from the cache
	outStale                      // served stale (stale-while-revalidate, max-stale, stale-if-error)
	outMiss                       // sent to the handler: not in the cache, or not reusable
	outRevalidated                // a stored response confirmed by the handler's 304
	outBypass                     // not cacheable (method, cookies, a body, the key)
	outStored                     // a response stored
	outInvalidated                // an unsafe request invalidated its URL
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"hit", "stale", "miss", "revalidated", "bypass", "stored", "invalidated"}

// Stats is a snapshot of the middleware's counters, by outcome: "hit",
// "stale", "miss", "revalidated", "bypass", "stored", "invalidated".
type Stats map[string]int64

// Stats returns a snapshot of the counters.
func (m *Middleware) Stats() Stats {
	s := make(Stats, numOutcomes)
	for i := range m.counts {
		s[outcomeNames[i]] = m.counts[i].Load()
	}
	return s
}

func (m *Middleware) count(o outcome) { m.counts[o].Add(1) }

// register exports the counters as tiercache.http.outcomes{outcome}, read
// at collection time so that requests build no attribute sets.
func (m *Middleware) register(meter metric.Meter) (metric.Registration, error) {
	c, err := meter.Int64ObservableCounter("tiercache.http.outcomes",
		metric.WithDescription("What the HTTP cache did: hit, stale, miss, revalidated, bypass (requests); stored, invalidated (responses)."))
	if err != nil {
		return nil, err
	}
	var opts [numOutcomes]metric.ObserveOption
	for i, name := range outcomeNames {
		opts[i] = metric.WithAttributes(attribute.String("outcome", name), attribute.String("cache", m.cfg.Name))
	}
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for i := range m.counts {
			o.ObserveInt64(c, m.counts[i].Load(), opts[i])
		}
		return nil
	}, c)
}
