// Command example-catalog is a product catalog API on a real database,
// cached by tiercache in every layer: an HTTP response cache (echocache)
// in front of the handlers, a product cache (tiered) in front of the
// database, invalidation across replicas, warm-up, rate-limited writes,
// Prometheus metrics, traces and a live cache page.
//
//	go run ./example-catalog                 # SQLite in the temp dir, Redis if one answers, else an embedded one
//	go run ./example-catalog loadgen -h      # the load generator
//
// Environment: ADDR, DATABASE_URL (postgres://… or sqlite:<path>),
// REDIS_URL, PURGE_TOKEN, OTEL_TRACES_EXPORTER (none, stdout, otlp);
// flags override them (see -h). docs/catalog.md explains the numbers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	neturl "net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/tiered"
)

const defaultRedisURL = "redis://127.0.0.1:6379/0"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "loadgen" {
		os.Exit(runLoadgen(os.Args[2:]))
	}
	if err := serve(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "example-catalog:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("example-catalog", flag.ContinueOnError)
	addr := fs.String("addr", envOr("ADDR", ":8080"), "listen address (ADDR)")
	dbURL := fs.String("db", os.Getenv("DATABASE_URL"), "database: postgres://… or sqlite:<path>; empty for SQLite in the temp dir (DATABASE_URL)")
	redisURL := fs.String("redis", os.Getenv("REDIS_URL"), "Redis URL; empty: "+defaultRedisURL+" if it answers, else an embedded server; \"embedded\": that server, for demos only (REDIS_URL)")
	seed := fs.Int("products", 10_000, "products to create in an empty database")
	dbDelay := fs.Duration("db-delay", 0, "added to every database query, to play a slower database")
	dbConns := fs.Int("db-conns", 0, "database queries at once (a connection pool), -db-delay included; 0: no limit")
	cacheOff := fs.Bool("cache-off", false, "serve every request from the database, to see what the cache buys")
	l1 := fs.Int64("l1-bytes", 64<<20, "L1 budget of each cache (products, responses)")
	token := fs.String("purge-token", os.Getenv("PURGE_TOKEN"), "bearer token for POST /admin/purge; empty: purging off (PURGE_TOKEN)")
	writeRate := fs.Int("write-rate", 20, "writes per second per client; -1: no limit")
	trustProxy := fs.Bool("trust-proxy", false, "take the client address for the rate limit from X-Forwarded-For (only behind a proxy that sets it)")
	warmFile := fs.String("warm-file", "", "keys to warm from at start (one per line); default: the cluster's hot keys")
	namespace := fs.String("namespace", "catalog", "key namespace in Redis: replicas of one catalog share it")
	traces := fs.String("traces", os.Getenv("OTEL_TRACES_EXPORTER"), "traces: none, stdout or otlp (OTEL_TRACES_EXPORTER)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tm, err := newTelemetry(ctx, *traces)
	if err != nil {
		return err
	}
	defer tm.Close(context.Background())
	cfg := Config{
		DatabaseURL: *dbURL, Seed: *seed, DBDelay: *dbDelay, DBConns: *dbConns, CacheOff: *cacheOff, L1Bytes: *l1,
		PurgeToken: *token, WriteRate: *writeRate, TrustProxy: *trustProxy, WarmFile: *warmFile, Namespace: *namespace, Logger: log, Telemetry: tm,
	}
	if !*cacheOff {
		rdb, kind, closeRedis, err := connectRedis(ctx, log, *redisURL, defaultRedisURL)
		if err != nil {
			return err
		}
		defer closeRedis()
		cfg.Redis, cfg.RedisKind = rdb, kind
	}
	app, err := NewApp(ctx, cfg)
	if err != nil {
		return err
	}
	defer app.Close()

	srv := &http.Server{Addr: *addr, Handler: app.Handler(),
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("example-catalog listening", "addr", *addr, "redis", cfg.RedisKind, "cache", !*cacheOff, "db_delay", *dbDelay)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	// ListenAndServe returns as soon as Shutdown begins: wait for the
	// requests in flight (and their invalidations) before closing the
	// caches and Redis under them.
	<-stopped
	return nil
}

// connectRedis connects to url. With no url, it tries def and, if nothing
// answers there, starts an embedded Redis-protocol server
// (miniredis) so that every layer still runs: for demos only, since
// nothing else shares it. A url that does not answer is used anyway: the
// cache then serves from L1 and the database until Redis comes back.
func connectRedis(ctx context.Context, log *slog.Logger, url, def string) (redis.UniversalClient, string, func(), error) {
	explicit := url != ""
	if url == "embedded" {
		return embeddedRedis(log, "REDIS_URL=embedded")
	}
	if !explicit {
		url = def
	}
	rdb, err := tiered.NewRedisClient(url)
	if err != nil {
		return nil, "", nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	err = rdb.Ping(pctx).Err()
	cancel()
	switch {
	case err == nil:
		return rdb, "redis", func() { rdb.Close() }, nil
	case explicit:
		log.Warn("Redis does not answer; serving from L1 and the database until it does", "url", redacted(url), "err", err)
		return rdb, "redis", func() { rdb.Close() }, nil
	}
	rdb.Close()
	return embeddedRedis(log, "no Redis at "+def)
}

// redacted is rawURL with its password masked, for the log.
func redacted(rawURL string) string {
	u, err := neturl.Parse(rawURL)
	if err != nil {
		return "(a URL that does not parse)"
	}
	return u.Redacted()
}

// embeddedRedis starts miniredis in process and connects to it.
func embeddedRedis(log *slog.Logger, why string) (redis.UniversalClient, string, func(), error) {
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, "", nil, fmt.Errorf("embedded Redis: %w", err)
	}
	log.Warn(why + ": using an embedded in-process Redis (miniredis), FOR DEMOS ONLY; set REDIS_URL to share a real one between replicas")
	rdb, err := tiered.NewRedisClient("redis://" + mr.Addr())
	if err != nil {
		mr.Close()
		return nil, "", nil, err
	}
	return rdb, "embedded", func() { rdb.Close(); mr.Close() }, nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
