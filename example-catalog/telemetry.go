package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// telemetry is the application's choice of OpenTelemetry SDK (the library
// only uses the API): metrics to a Prometheus registry served on /metrics,
// traces to stdout or OTLP when OTEL_TRACES_EXPORTER says so.
type telemetry struct {
	meters   *sdkmetric.MeterProvider
	tracers  trace.TracerProvider
	metrics  http.Handler
	shutdown []func(context.Context) error
}

// newTelemetry sets up the providers. traces is "" or "none" (off),
// "stdout" or "otlp" (OTEL_EXPORTER_OTLP_ENDPOINT and the other standard
// variables configure it).
func newTelemetry(ctx context.Context, traces string) (*telemetry, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	t := &telemetry{
		meters:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)),
		metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		tracers: noop.NewTracerProvider(),
	}
	t.shutdown = append(t.shutdown, t.meters.Shutdown)
	var sp sdktrace.SpanExporter
	switch traces {
	case "", "none":
	case "stdout":
		sp, err = stdouttrace.New(stdouttrace.WithWriter(os.Stdout))
	case "otlp":
		sp, err = otlptracehttp.New(ctx)
	default:
		err = fmt.Errorf("OTEL_TRACES_EXPORTER %q: want none, stdout or otlp", traces)
	}
	if err != nil {
		return nil, err
	}
	if sp != nil {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(sp))
		t.tracers = tp
		t.shutdown = append(t.shutdown, tp.Shutdown)
	}
	return t, nil
}

func (t *telemetry) Close(ctx context.Context) {
	for _, f := range slices.Backward(t.shutdown) {
		_ = f(ctx)
	}
}

// latencies keeps the last requests' durations for /debug/cache: a ring of
// samples, enough for a p99 that moves with the load.
type latencies struct {
	mu    sync.Mutex
	ring  [4096]float64 // milliseconds
	n     int
	count int64
}

func (l *latencies) add(ms float64) {
	l.mu.Lock()
	l.ring[l.n%len(l.ring)] = ms
	l.n++
	l.count++
	l.mu.Unlock()
}

// quantiles returns the p50 and p99 of the samples held, in milliseconds.
func (l *latencies) quantiles() (count int64, p50, p99 float64) {
	l.mu.Lock()
	n := min(l.n, len(l.ring))
	s := make([]float64, n)
	copy(s, l.ring[:n])
	count = l.count
	l.mu.Unlock()
	if n == 0 {
		return count, 0, 0
	}
	sort.Float64s(s)
	return count, s[n*50/100], s[min(n*99/100, n-1)]
}

// observe is the Echo middleware for request metrics and spans, and the
// X-Cache header: HIT, STALE or MISS, read off the Cache-Status that the
// cache middleware sets.
func observe(tp trace.TracerProvider, mp metric.MeterProvider, lat *latencies) (echo.MiddlewareFunc, error) {
	tracer := tp.Tracer("example-catalog/http")
	hist, err := mp.Meter("example-catalog/http").Float64Histogram("http.server.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of HTTP requests."),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
	if err != nil {
		return nil, err
	}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			req := c.Request()
			ctx, span := tracer.Start(req.Context(), req.Method+" "+c.Path(), trace.WithSpanKind(trace.SpanKindServer))
			defer span.End()
			c.SetRequest(req.WithContext(ctx))
			res := c.Response()
			res.Before(func() {
				if _, ok := res.Header()["Cache-Status"]; ok {
					res.Header().Set("X-Cache", xCache(res.Header().Get("Cache-Status")))
				}
			})
			err := next(c)
			if err != nil {
				c.Error(err) // writes the error response now, so its status is known
				span.RecordError(err)
			}
			status := res.Status
			if status >= 500 {
				span.SetStatus(codes.Error, strconv.Itoa(status))
			}
			d := time.Since(start)
			hist.Record(ctx, d.Seconds(), metric.WithAttributes(
				attribute.String("http.request.method", req.Method), attribute.String("http.route", c.Path()),
				attribute.Int("http.response.status_code", status)))
			lat.add(float64(d.Microseconds()) / 1000)
			return nil
		}
	}, nil
}

// xCache maps a Cache-Status value (RFC 9211) to the X-Cache header
// people read: a hit is HIT, or STALE when it was served stale; anything
// that went to the handler is MISS.
func xCache(status string) string {
	hit, stale := false, false
	for _, p := range strings.Split(status, ";") {
		switch strings.TrimSpace(p) {
		case "hit":
			hit = true
		case "fwd=stale":
			stale = true
		}
	}
	switch {
	case hit && stale:
		return "STALE"
	case hit:
		return "HIT"
	}
	return "MISS"
}
