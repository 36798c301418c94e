package warmup_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/tiercache/tiercache/tiered"
	"github.com/tiercache/tiercache/warmup"
)

func ExampleRun() {
	// In production: tiered.Config{Redis: rdb, Namespace: "catalog"}, so
	// that most keys come from L2, and only the rest from the database.
	products, err := tiered.New[string](tiered.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()

	tracker := &warmup.Tracker{}
	e := echo.New()
	e.GET("/readyz", tracker.Handler(0.9)) // 503 until 90 % is warm

	keys := warmup.FromReader(strings.NewReader("product:1\nproduct:2\nproduct:3\n"))
	rep, err := warmup.Run(context.Background(), products, keys, warmup.Config[string]{
		Load: func(_ context.Context, key string) (string, error) {
			return "from the database: " + key, nil
		},
		Concurrency: 2,  // loads in flight, at most
		Rate:        50, // loads a second, at most
		Burst:       5,
		Tracker:     tracker,
	})
	fmt.Println(rep.Total, rep.Loaded, rep.FromCache, err, tracker.Ready(0.9))
	// Output: 3 3 0 <nil> true
}
