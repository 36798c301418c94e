package echocache_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/tiercache/tiercache/middleware/echocache"
	"github.com/tiercache/tiercache/tiered"
)

// BenchmarkCachedResponse: a 2 KB JSON response served through the
// middleware from L1, vs a plain handler writing the same bytes from
// memory; requests per second in the same run. Run with -cpu 1,2 for the
// serial and parallel figures.
func BenchmarkCachedResponse(b *testing.B) {
	body := []byte(`{"items":"` + strings.Repeat("x", 2048-12) + `"}`)
	handler := func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "max-age=3600")
		return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, body)
	}
	run := func(b *testing.B, e *echo.Echo) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			req := httptest.NewRequest(http.MethodGet, "/products/42", nil)
			for pb.Next() {
				rec := httptest.NewRecorder()
				e.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK || rec.Body.Len() != len(body) {
					b.Errorf("%d, %d bytes", rec.Code, rec.Body.Len())
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	}
	b.Run("impl=handler", func(b *testing.B) {
		e := echo.New()
		e.GET("/products/:id", handler)
		run(b, e)
	})
	b.Run("impl=echocache", func(b *testing.B) {
		responses, err := tiered.New[echocache.Response](tiered.Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer responses.Close()
		e := echo.New()
		e.Use(echocache.New(responses))
		e.GET("/products/:id", handler)
		run(b, e)
	})
}
