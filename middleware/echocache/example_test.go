package echocache_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/labstack/echo/v4"

	"github.com/tiercache/tiercache/middleware/echocache"
	"github.com/tiercache/tiercache/tiered"
)

func ExampleNew() {
	// In production: tiered.Config{Redis: rdb, Namespace: "catalog-http"},
	// so that every replica shares L2 and invalidations.
	responses, err := tiered.New[echocache.Response](tiered.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer responses.Close()

	e := echo.New()
	e.Use(echocache.New(responses))
	e.GET("/products/:id", func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "max-age=60") // no freshness, no caching
		return c.JSON(http.StatusOK, map[string]string{"id": c.Param("id")})
	})

	for range 2 {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/products/42", nil))
		fmt.Println(rec.Code, rec.Header().Get("Cache-Status"))
	}
	// Output:
	// 200 tiercache; fwd=miss
	// 200 tiercache; hit
}

func ExampleMiddleware_PurgeTags() {
	responses, _ := tiered.New[echocache.Response](tiered.Config{})
	defer responses.Close()
	cache, err := echocache.NewMiddleware(echocache.Config{Cache: responses})
	if err != nil {
		log.Fatal(err)
	}
	e := echo.New()
	e.Use(cache.Handler)
	e.GET("/products/:id", func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "max-age=600")
		c.Response().Header().Set("Surrogate-Key", "product-"+c.Param("id")+" category-7")
		return c.String(http.StatusOK, "a teapot")
	})
	get := func() string {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/products/42", nil))
		return rec.Header().Get("Cache-Status")
	}
	get()
	fmt.Println(get())
	// After a change to category 7, in any replica:
	if err := cache.PurgeTags(context.Background(), "category-7"); err != nil {
		log.Fatal(err)
	}
	fmt.Println(get())
	// Output:
	// tiercache; hit
	// tiercache; fwd=miss
}
