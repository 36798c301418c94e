package invalidation_test

import (
	"context"
	"log"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/invalidation"
)

// This example needs a Redis at 127.0.0.1:6379, so it has no Output and
// is compiled but not run.
func ExampleNew() {
	// ContextTimeoutEnabled lets Config.PublishTimeout bound a PUBLISH to
	// a Redis that hangs; go-redis ignores context deadlines without it.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true})
	defer rdb.Close()

	// local stands in for this process's in-memory cache.
	var local sync.Map
	bus, err := invalidation.New(rdb, invalidation.Config{
		Channel: "tiercache:inv:catalog",
		Evict: func(keys []string) {
			for _, k := range keys {
				local.Delete(k)
			}
		},
		Flush: func(reason string) { local.Clear() },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if !bus.WaitFresh(ctx) {
		log.Printf("bus not fresh: serve local copies only while younger than %v", bus.StalenessBound())
	}

	// After changing product 42 in the database, tell the other processes.
	local.Delete("product:42")
	if err := bus.Publish(ctx, "product:42"); err != nil {
		log.Printf("invalidation not sent: %v", err)
	}
}
