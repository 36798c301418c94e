package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/tiered"
)

// Product is the catalog's unit of sale.
type Product struct {
	ID         int       `json:"id"`
	Name       string    `json:"name"`
	Category   string    `json:"category"`
	PriceCents int       `json:"price_cents"`
	Stock      int       `json:"stock"`
	Version    int       `json:"version"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// store stands in for the database until the catalog gets a real one.
type store struct {
	products map[int]Product
	delay    time.Duration
	queries  atomic.Int64
}

func newStore(n int, delay time.Duration) *store {
	categories := []string{"books", "garden", "kitchen", "toys", "tools"}
	s := &store{products: make(map[int]Product, n), delay: delay}
	now := time.Now().UTC().Truncate(time.Second)
	for id := 1; id <= n; id++ {
		s.products[id] = Product{
			ID: id, Name: fmt.Sprintf("Product %d", id), Category: categories[id%len(categories)],
			PriceCents: 100 + id%9000, Stock: id % 50, Version: 1, UpdatedAt: now,
		}
	}
	return s
}

func (s *store) product(ctx context.Context, id int) (Product, error) {
	s.queries.Add(1)
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return Product{}, ctx.Err()
	}
	p, ok := s.products[id]
	if !ok {
		return Product{}, tiered.ErrNotFound
	}
	return p, nil
}

type app struct {
	cache *tiered.Cache[Product]
	db    *store
	log   *slog.Logger
}

func newApp(rdb redis.UniversalClient, namespace string, db *store, log *slog.Logger) (*app, error) {
	c, err := tiered.New[Product](tiered.Config{Redis: rdb, Namespace: namespace, TTL: 10 * time.Minute, Logger: log})
	if err != nil {
		return nil, err
	}
	return &app{cache: c, db: db, log: log}, nil
}

func (a *app) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.GET("/products/:id", a.getProduct)
	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok") })
	e.GET("/debug/cache.json", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]any{"cache": a.cache.Stats(), "db_queries": a.db.queries.Load()})
	})
	return e
}

func (a *app) getProduct(c echo.Context) error {
	id, err := strconv.Atoi(c.Param("id"))
	if err != nil || id <= 0 {
		return echo.NewHTTPError(http.StatusBadRequest, "id must be a positive integer")
	}
	ctx := c.Request().Context()
	p, err := a.cache.GetOrLoad(ctx, "product:"+strconv.Itoa(id), func(ctx context.Context, _ string) (Product, error) {
		return a.db.product(ctx, id)
	})
	switch {
	case errors.Is(err, tiered.ErrNotFound):
		return echo.NewHTTPError(http.StatusNotFound, "no such product")
	case err != nil:
		return fmt.Errorf("product %d: %w", id, err)
	}
	return c.JSON(http.StatusOK, p)
}
