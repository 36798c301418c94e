package tiered_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

// TestWriteThroughFailureChangesNothing: a write-through whose source write
// fails leaves both tiers of the writer and another process's L1 as they
// were; one that succeeds updates them all.
func TestWriteThroughFailureChangesNothing(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		a := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		b := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		if err := a.Set(ctx, "k", product{ID: 1}); err != nil {
			t.Fatal(err)
		}
		if v, err := b.Get(ctx, "k"); err != nil || v.ID != 1 {
			t.Fatalf("b Get = %+v, %v", v, err)
		}
		source := map[string]product{}
		down := errors.New("database down")
		failing := func(context.Context, string, product) error { return down }
		if err := a.WriteThrough(ctx, "k", product{ID: 2}, failing); !errors.Is(err, down) {
			t.Fatalf("WriteThrough with a failing source = %v, want its error", err)
		}
		l2 := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, DisableInvalidation: true})
		time.Sleep(20 * time.Millisecond) // room for a wrong invalidation to arrive
		for name, c := range map[string]*tiered.Cache[product]{"a": a, "b": b, "L2": l2} {
			if v, err := c.Get(ctx, "k"); err != nil || v.ID != 1 {
				t.Errorf("%s after a failed write-through: %+v, %v; want the old value 1", name, v, err)
			}
		}
		if _, _, ok := tiered.PeekL1(b, "k"); !ok {
			t.Errorf("b's L1 copy was evicted by a write-through that failed")
		}

		ok := func(_ context.Context, k string, v product) error { source[k] = v; return nil }
		if err := a.WriteThrough(ctx, "k", product{ID: 3}, ok); err != nil {
			t.Fatal(err)
		}
		if source["k"].ID != 3 {
			t.Errorf("source = %+v, want 3", source["k"])
		}
		eventually(t, time.Second, "b never saw the write-through", func() bool {
			v, err := b.Get(ctx, "k")
			return err == nil && v.ID == 3
		})
		fresh := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns, DisableInvalidation: true})
		if v, _ := fresh.Get(ctx, "k"); v.ID != 3 {
			t.Errorf("L2 after write-through = %+v, want 3", v)
		}
	})
}

func TestWriteAround(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ctx := context.Background()
		ns := redistest.Namespace(t)
		a := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		b := newCache(t, tiered.Config{Redis: r.Client(t), Namespace: ns})
		source := map[string]product{"k": {ID: 1}}
		load := func(_ context.Context, k string) (product, error) { return source[k], nil }
		if _, err := b.GetOrLoad(ctx, "k", load); err != nil {
			t.Fatal(err)
		}
		write := func(_ context.Context, k string, v product) error { source[k] = v; return nil }
		if err := a.WriteAround(ctx, "k", product{ID: 2}, write); err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Second, "b kept its old copy after a write-around", func() bool {
			v, err := b.GetOrLoad(ctx, "k", load)
			return err == nil && v.ID == 2
		})
		if err := a.WriteAround(ctx, "k", product{}, func(context.Context, string, product) error { panic("boom") }); err == nil {
			t.Errorf("a panicking writer: no error")
		}
		if err := a.WriteThrough(ctx, "", product{}, write); !errors.Is(err, tiered.ErrInvalidKey) {
			t.Errorf("WriteThrough with an empty key = %v, want ErrInvalidKey", err)
		}
	})
}
