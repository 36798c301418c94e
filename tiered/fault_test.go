package tiered_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

// TestRedisOutage stops a private redis-server mid-test: reads must go on
// from L1 and the loader, the breaker must open, after which reads send
// Redis nothing at all, and L2 must be used again once Redis is back.
func TestRedisOutage(t *testing.T) {
	srv := redistest.Start(t)
	client := libraryClient(t, "redis://"+srv.Addr+"/0")
	reads := &commandCounter{}
	client.AddHook(reads)
	reader := sdkmetric.NewManualReader()
	ns := redistest.Namespace(t)
	c := newCache(t, tiered.Config{
		Redis: client, Namespace: ns,
		L1TTL: time.Hour, BreakerCooldown: 100 * time.Millisecond,
		MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)),
	})
	ctx := context.Background()
	src := &countingLoader{}
	for i := range 10 {
		if _, err := c.GetOrLoad(ctx, fmt.Sprintf("warm%d", i), src.load); err != nil {
			t.Fatal(err)
		}
	}

	srv.Stop()
	var slowest time.Duration
	// Until the breaker opens, which takes failures over two L2 timeouts,
	// and 200 calls at least.
	for i := 0; i < 200 || c.Stats().Breaker != "open"; i++ {
		if i > 100_000 {
			t.Fatalf("breaker still %s after %d calls", c.Stats().Breaker, i)
		}
		key := fmt.Sprintf("warm%d", i%10) // in L1
		if i%2 == 1 {
			key = fmt.Sprintf("cold%d", i) // only the loader has it
		}
		start := time.Now()
		v, err := c.GetOrLoad(ctx, key, src.load)
		d := time.Since(start)
		if err != nil || v.Name != "p-"+key {
			t.Fatalf("GetOrLoad(%s) with Redis down = %+v, %v", key, v, err)
		}
		slowest = max(slowest, d)
		// Only a sanity bound: how long a refused dial takes is up to the
		// machine. go-redis's own retries would take 1.7 s.
		if d > time.Second {
			t.Errorf("GetOrLoad(%s) with Redis down took %v", key, d)
		}
	}
	// With the breaker open, a read costs no Redis command: microseconds.
	before := reads.n.Load()
	var open []time.Duration
	for i := range 200 {
		start := time.Now()
		if _, err := c.GetOrLoad(ctx, fmt.Sprintf("open%d", i), src.load); err != nil {
			t.Fatal(err)
		}
		open = append(open, time.Since(start))
		if c.Stats().Breaker != "open" {
			break // the cooldown ended: a probe may go out
		}
	}
	if n := reads.n.Load() - before; n > 1 {
		t.Errorf("%d Redis reads with the breaker open, want at most the one probe", n)
	}
	slices.Sort(open)
	t.Logf("with the breaker open: median %v, max %v over %d misses", open[len(open)/2], open[len(open)-1], len(open))
	s := c.Stats()
	t.Logf("Redis down: slowest call %v, stats %+v", slowest, s)
	if s.L2Errors == 0 || s.Breaker != "open" {
		t.Errorf("Stats = %+v, want L2 errors counted and the breaker open", s)
	}
	if got := metricSum(t, reader, "tiercache.l2.errors", attribute.String("kind", "call")); got == 0 {
		t.Errorf("metric tiercache.l2.errors{kind=call} = 0, want > 0")
	}
	if got := metricSum(t, reader, "tiercache.breaker.state"); got != 2 {
		t.Errorf("metric tiercache.breaker.state = %d, want 2 (open)", got)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// After the cooldown the breaker lets a probe through; writes reach L2
	// again and another cache can read them from there.
	other := newCache(t, tiered.Config{Redis: client, Namespace: ns})
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		key := fmt.Sprintf("back%d", i)
		if _, err := c.GetOrLoad(ctx, key, src.load); err != nil {
			t.Fatal(err)
		}
		if _, err := other.Get(ctx, key); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("L2 not used again 5s after Redis returned; stats %+v", c.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWritesReturnL2Errors: with Redis down, a write says so in both modes
// (the writer's L1 still gets the value), while a read fails only in
// strict mode.
func TestWritesReturnL2Errors(t *testing.T) {
	srv := redistest.Start(t)
	client := libraryClient(t, "redis://"+srv.Addr)
	ns := redistest.Namespace(t)
	strict := newCache(t, tiered.Config{Redis: client, Namespace: ns, Strict: true, WriteTimeout: 50 * time.Millisecond})
	open := newCache(t, tiered.Config{Redis: client, Namespace: ns, WriteTimeout: 50 * time.Millisecond})
	srv.Stop()
	ctx := context.Background()
	for _, c := range []*tiered.Cache[product]{strict, open} {
		if err := c.Set(ctx, "k", product{ID: 1}); !errors.Is(err, tiered.ErrL2Unavailable) {
			t.Errorf("Set with Redis down error = %v, want ErrL2Unavailable", err)
		}
		if v, err := c.Get(ctx, "k"); err != nil || v.ID != 1 {
			t.Errorf("Get after a failed Set = %+v, %v; want the writer's L1 copy", v, err)
		}
		if err := c.Delete(ctx, "k"); !errors.Is(err, tiered.ErrL2Unavailable) {
			t.Errorf("Delete with Redis down error = %v, want ErrL2Unavailable", err)
		}
	}
	if _, err := strict.Get(ctx, "other"); err == nil || errors.Is(err, tiered.ErrNotFound) {
		t.Errorf("strict Get with Redis down error = %v, want the L2 failure", err)
	}
	if _, err := open.Get(ctx, "other"); !errors.Is(err, tiered.ErrNotFound) {
		t.Errorf("fail-open Get with Redis down error = %v, want ErrNotFound", err)
	}
}

// metricSum collects reader and returns the sum of the named metric's data
// points that carry all of attrs.
func metricSum(t *testing.T, reader *sdkmetric.ManualReader, name string, attrs ...attribute.KeyValue) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			var points []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				points = d.DataPoints
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			}
		next:
			for _, p := range points {
				for _, a := range attrs {
					if v, ok := p.Attributes.Value(a.Key); !ok || v != a.Value {
						continue next
					}
				}
				sum += p.Value
			}
		}
	}
	return sum
}
