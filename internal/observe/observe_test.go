package observe

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

type snap struct{ a, b int64 }

func TestRegister(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	m := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test")
	calls := 0
	snapshot := func() snap { calls++; return snap{a: 3, b: 5} }
	_, err := Register(m, snapshot, []Instrument[snap]{
		{Name: "c", Description: "a counter", Points: []Point[snap]{
			P(func(s *snap) int64 { return s.a }, attribute.String("k", "a")),
			P(func(s *snap) int64 { return s.b }, attribute.String("k", "b"))}},
		{Name: "g", Gauge: true, Unit: "By", Points: []Point[snap]{P(func(s *snap) int64 { return s.a + s.b })}},
	}, attribute.String("ns", "x"))
	if err != nil {
		t.Fatal(err)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Errorf("snapshot taken %d times per collection, want 1", calls)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			var points []metricdata.DataPoint[int64]
			switch d := mt.Data.(type) {
			case metricdata.Sum[int64]:
				points = d.DataPoints
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			}
			for _, dp := range points {
				if v, _ := dp.Attributes.Value("ns"); v.AsString() != "x" {
					t.Errorf("%s: no common attribute in %v", mt.Name, dp.Attributes)
				}
				k, _ := dp.Attributes.Value("k")
				got[mt.Name+"/"+k.AsString()] = dp.Value
			}
		}
	}
	want := map[string]int64{"c/a": 3, "c/b": 5, "g/": 8}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
}
