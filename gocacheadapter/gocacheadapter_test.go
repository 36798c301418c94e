package gocacheadapter_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/eko/gocache/lib/v4/cache"
	"github.com/eko/gocache/lib/v4/store"

	"github.com/tiercache/tiercache/gocacheadapter"
	"github.com/tiercache/tiercache/tiered"
)

type product struct{ ID int }

// The adapter must keep satisfying gocache's interface.
var _ cache.CacheInterface[product] = gocacheadapter.Adapter[product]{}

func Example() {
	products, _ := tiered.New[product](tiered.Config{})
	defer products.Close()
	gc := gocacheadapter.New(products) // satisfies gocache's cache.CacheInterface[product]
	_ = gc.Set(context.Background(), "product:1", product{ID: 1})
	p, err := gc.Get(context.Background(), "product:1")
	fmt.Println(p.ID, err, gc.GetType())
	// Output: 1 <nil> tiered
}

func TestAdapterRefusesWhatItCannotDo(t *testing.T) {
	c, err := tiered.New[product](tiered.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	gc := gocacheadapter.New(c)
	ctx := context.Background()
	if _, err := gc.Get(ctx, 42); !errors.Is(err, tiered.ErrInvalidKey) {
		t.Errorf("Get(42) = %v, want ErrInvalidKey", err)
	}
	if err := gc.Clear(ctx); !errors.Is(err, store.ErrNotSupported) {
		t.Errorf("Clear = %v, want ErrNotSupported", err)
	}
	if err := gc.Invalidate(ctx); !errors.Is(err, store.ErrNotSupported) {
		t.Errorf("Invalidate = %v, want ErrNotSupported", err)
	}
	if err := gc.Set(ctx, "k", product{ID: 7}); err != nil {
		t.Fatal(err)
	}
	if err := gc.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := gc.Get(ctx, "k"); !errors.Is(err, tiered.ErrNotFound) {
		t.Errorf("Get after Delete = %v, want ErrNotFound", err)
	}
}
