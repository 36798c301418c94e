package tiered_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/tiercache/tiercache/tiered"
)

type Product struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
}

// findProduct stands in for a database query.
func findProduct(_ context.Context, key string) (Product, error) {
	if key != "product:42" {
		return Product{}, tiered.ErrNotFound // cached as absent for NegativeTTL
	}
	return Product{ID: 42, Name: "Teapot"}, nil
}

func ExampleNew() {
	// With Redis as L2 (uncomment, and set a Namespace):
	//   rdb, err := tiered.NewRedisClient("redis://127.0.0.1:6379/0")
	//   cfg.Redis, cfg.Namespace = rdb, "catalog"
	cfg := tiered.Config{TTL: 10 * time.Minute, L1MaxBytes: 32 << 20}
	products, err := tiered.New[Product](cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()
	fmt.Println(products.Stats().Breaker)
	// Output: none
}

func ExampleCache_GetOrLoad() {
	products, err := tiered.New[Product](tiered.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()
	ctx := context.Background()

	p, err := products.GetOrLoad(ctx, "product:42", findProduct)
	fmt.Println(p.Name, err)
	p, err = products.GetOrLoad(ctx, "product:42", findProduct) // from L1
	fmt.Println(p.Name, err, products.Stats().Loads)
	_, err = products.GetOrLoad(ctx, "product:7", findProduct)
	fmt.Println(errors.Is(err, tiered.ErrNotFound))
	// Output:
	// Teapot <nil>
	// Teapot <nil> 1
	// true
}

func ExampleCache_Get() {
	products, err := tiered.New[Product](tiered.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()
	ctx := context.Background()

	if _, err := products.Get(ctx, "product:42"); errors.Is(err, tiered.ErrNotFound) {
		fmt.Println("miss")
	}
	if err := products.Set(ctx, "product:42", Product{ID: 42, Name: "Teapot"}); err != nil {
		log.Fatal(err)
	}
	p, err := products.Get(ctx, "product:42")
	fmt.Println(p.Name, err)
	// Output:
	// miss
	// Teapot <nil>
}

func ExampleCache_Delete() {
	products, _ := tiered.New[Product](tiered.Config{})
	defer products.Close()
	ctx := context.Background()
	_ = products.Set(ctx, "product:42", Product{ID: 42})
	_ = products.Delete(ctx, "product:42")
	_, err := products.Get(ctx, "product:42")
	fmt.Println(errors.Is(err, tiered.ErrNotFound))
	// Output: true
}

func ExampleNewRedisClient() {
	// Needs a Redis, so this example has no Output and only compiles.
	rdb, err := tiered.NewRedisClient("redis://:secret@127.0.0.1:6379/0") // rediss:// for TLS
	if err != nil {
		log.Fatal(err)
	}
	defer rdb.Close()
	products, err := tiered.New[Product](tiered.Config{Redis: rdb, Namespace: "catalog"})
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()
}

func ExampleCache_InvalidateTags() {
	// With Redis, InvalidateTags removes exactly the tagged keys, from L2
	// and from the L1 of every process; an L1-only cache, as here, clears
	// its whole L1.
	products, _ := tiered.New[Product](tiered.Config{})
	defer products.Close()
	ctx := context.Background()
	_ = products.Set(ctx, "product:42", Product{ID: 42}, tiered.WithTags("category:teapots"))
	_ = products.InvalidateTags(ctx, "category:teapots")
	_, err := products.Get(ctx, "product:42")
	fmt.Println(errors.Is(err, tiered.ErrNotFound))
	// Output: true
}

func ExampleWithTags() {
	products, _ := tiered.New[Product](tiered.Config{})
	defer products.Close()
	ctx := context.Background()
	// A loaded value is tagged too; InvalidateTags("category:teapots")
	// would remove it.
	p, err := products.GetOrLoad(ctx, "product:42", findProduct, tiered.WithTags("category:teapots", "brand:acme"))
	fmt.Println(p.Name, err)
	// Output: Teapot <nil>
}

func ExampleWithTTL() {
	products, _ := tiered.New[Product](tiered.Config{TTL: time.Hour})
	defer products.Close()
	ctx := context.Background()
	err := products.Set(ctx, "flash-sale", Product{ID: 1}, tiered.WithTTL(5*time.Minute))
	fmt.Println(err)
	err = products.Set(ctx, "flash-sale", Product{ID: 1}, tiered.WithTTL(0))
	fmt.Println(err)
	// Output:
	// <nil>
	// tiered: WithTTL(0s): must be positive
}

func ExampleCache_GetOrLoadMany() {
	products, _ := tiered.New[Product](tiered.Config{})
	defer products.Close()
	ctx := context.Background()
	_ = products.Set(ctx, "product:1", Product{ID: 1, Name: "Kettle"})

	// One loader call, with exactly the keys in neither tier. Keys it
	// does not return are cached as absent.
	loadMany := func(ctx context.Context, missing []string) (map[string]Product, error) {
		fmt.Println("loading", missing)
		return map[string]Product{"product:2": {ID: 2, Name: "Teapot"}}, nil
	}
	got, err := products.GetOrLoadMany(ctx, []string{"product:1", "product:2", "product:3"}, loadMany)
	fmt.Println(len(got), got["product:1"].Name, got["product:2"].Name, err)
	// Output:
	// loading [product:2 product:3]
	// 2 Kettle Teapot <nil>
}

func ExampleCache_GetMany() {
	products, _ := tiered.New[Product](tiered.Config{})
	defer products.Close()
	ctx := context.Background()
	_ = products.Set(ctx, "product:1", Product{ID: 1})
	got, err := products.GetMany(ctx, []string{"product:1", "product:2"})
	fmt.Println(len(got), err)
	// Output: 1 <nil>
}

func ExampleWithStale() {
	// Fresh for a minute; then served at once for up to an hour while one
	// refresh runs, and for up to a day while the database is down.
	products, _ := tiered.New[Product](tiered.Config{
		TTL: time.Minute, StaleTTL: time.Hour, MaxStale: 24 * time.Hour,
	})
	defer products.Close()
	ctx := context.Background()
	// This page may show a price past its TTL only while the database is
	// down, and for five minutes at most.
	p, err := products.GetOrLoad(ctx, "product:42", findProduct, tiered.WithStale(0, 5*time.Minute))
	fmt.Println(p.Name, err)
	// Output: Teapot <nil>
}

func ExampleCache_WriteThrough() {
	products, _ := tiered.New[Product](tiered.Config{})
	defer products.Close()
	ctx := context.Background()
	db := map[string]Product{}
	save := func(_ context.Context, key string, p Product) error { db[key] = p; return nil }

	// The database first; the cache (and every replica's L1) only if it took it.
	err := products.WriteThrough(ctx, "product:42", Product{ID: 42, Name: "Teapot"}, save)
	p, _ := products.Get(ctx, "product:42")
	fmt.Println(err, db["product:42"].Name, p.Name)
	// Output: <nil> Teapot Teapot
}

func ExampleCache_WriteAround() {
	products, _ := tiered.New[Product](tiered.Config{})
	defer products.Close()
	ctx := context.Background()
	db := map[string]Product{}
	save := func(_ context.Context, key string, p Product) error { db[key] = p; return nil }

	_ = products.Set(ctx, "product:42", Product{ID: 42, Name: "Teapot"})
	// The database, then the cache forgets the key: the next read loads it.
	err := products.WriteAround(ctx, "product:42", Product{ID: 42, Name: "Kettle"}, save)
	_, getErr := products.Get(ctx, "product:42")
	fmt.Println(err, db["product:42"].Name, errors.Is(getErr, tiered.ErrNotFound))
	// Output: <nil> Kettle true
}

func ExampleNewWriteBehind() {
	// Needs a Redis, so this example has no Output and only compiles.
	rdb, err := tiered.NewRedisClient("redis://127.0.0.1:6379/0")
	if err != nil {
		log.Fatal(err)
	}
	defer rdb.Close()
	products, err := tiered.New[Product](tiered.Config{Redis: rdb, Namespace: "catalog"})
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()

	// Flush runs in whichever replica holds the key's shard, in batches,
	// each key once with its latest value. The entry ID lets the database
	// refuse a replayed older write after a crash.
	saveAll := func(ctx context.Context, ws []tiered.PendingWrite[Product]) error {
		for _, w := range ws {
			// UPDATE products SET ..., version = $id WHERE id = $1 AND version < $id
			_ = w
		}
		return nil
	}
	writes, err := tiered.NewWriteBehind(products, tiered.WriteBehindConfig[Product]{Flush: saveAll})
	if err != nil {
		log.Fatal(err)
	}
	defer func() {
		// Flush what this replica holds before it exits; the rest stays
		// queued for the other replicas.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = writes.Close(ctx)
	}()
}

func ExampleWriteBehind_Set() {
	var writes *tiered.WriteBehind[Product] // from NewWriteBehind
	set := func(ctx context.Context) error {
		// Returns once Redis holds the write; every replica reads the new
		// value from then on, and the database gets it within the lag.
		return writes.Set(ctx, "product:42", Product{ID: 42, Name: "Teapot"})
	}
	_ = set
}
