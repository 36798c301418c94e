// Command example-catalog serves a product catalog through a tiered cache.
//
// This is the minimal version: one cached endpoint, GET /products/:id, over
// an in-memory table that stands in for the database (with a simulated
// query latency). It uses Redis from REDIS_URL, or 127.0.0.1:6379 if one
// answers, as L2; with none, it runs with L1 only and says so.
//
//	go run ./example-catalog
//	curl -i localhost:8080/products/42
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/tiered"
)

func main() {
	addr := flag.String("addr", envOr("ADDR", ":8080"), "listen address (ADDR)")
	redisURL := flag.String("redis", envOr("REDIS_URL", "redis://127.0.0.1:6379/0"), "Redis URL for L2 (REDIS_URL)")
	products := flag.Int("products", 10_000, "number of products to seed")
	dbDelay := flag.Duration("db-delay", 2*time.Millisecond, "simulated database latency per query")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rdb := connectRedis(ctx, log, *redisURL)
	if rdb != nil {
		defer rdb.Close()
	}
	app, err := newApp(rdb, "example-catalog", newStore(*products, *dbDelay), log)
	if err != nil {
		log.Error("start", "err", err)
		os.Exit(1)
	}
	defer app.cache.Close()

	srv := &http.Server{Addr: *addr, Handler: app.routes(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("example-catalog listening", "addr", *addr, "products", *products, "l2", rdb != nil)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serve", "err", err)
		os.Exit(1)
	}
}

// connectRedis returns a client when Redis answers at url, else nil.
func connectRedis(ctx context.Context, log *slog.Logger, url string) redis.UniversalClient {
	rdb, err := tiered.NewRedisClient(url)
	if err != nil {
		log.Error("bad REDIS_URL; running with L1 only", "err", err)
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		log.Warn("no Redis answers; running with L1 only (demo mode)", "err", err)
		rdb.Close()
		return nil
	}
	return rdb
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
