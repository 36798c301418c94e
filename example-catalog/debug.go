package main

import (
	_ "embed"
	"net/http"
	"os"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/tiercache/tiercache/middleware/echocache"
	"github.com/tiercache/tiercache/tiered"
)

// DebugStats is /debug/cache.json: the replica's counters since it
// started. The load generator reads it from every replica it drives.
type DebugStats struct {
	Instance     string          `json:"instance"`
	UptimeS      float64         `json:"uptime_s"`
	CacheEnabled bool            `json:"cache_enabled"`
	Redis        string          `json:"redis"` // "redis", "embedded" or "none"
	Ready        bool            `json:"ready"`
	Products     tiered.Stats    `json:"products"` // the product cache (L1, L2, loads)
	Pages        tiered.Stats    `json:"pages"`    // the HTTP response cache's tiers
	HTTP         echocache.Stats `json:"http"`     // the HTTP cache's outcomes
	DB           struct {
		Queries int64   `json:"queries"`
		DelayMS float64 `json:"delay_ms"`
	} `json:"db"`
	Requests struct {
		Count int64   `json:"count"`
		P50MS float64 `json:"p50_ms"` // over the last 4,096 requests
		P99MS float64 `json:"p99_ms"`
	} `json:"requests"`
}

func (a *App) stats() DebugStats {
	var s DebugStats
	s.Instance, _ = os.Hostname()
	s.UptimeS = time.Since(a.started).Seconds()
	s.CacheEnabled = a.products != nil
	s.Redis = a.cfg.RedisKind
	s.Ready = a.products == nil || a.ready.Ready(0)
	if a.products != nil {
		s.Products, s.Pages, s.HTTP = a.products.Stats(), a.pages.Stats(), a.http.Stats()
	}
	s.DB.Queries = a.db.queries.Load()
	s.DB.DelayMS = float64(a.cfg.DBDelay.Microseconds()) / 1000
	s.Requests.Count, s.Requests.P50MS, s.Requests.P99MS = a.lat.quantiles()
	return s
}

func (a *App) debugJSON(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, a.stats())
}

//go:embed debug.html
var debugHTML []byte

// debugPage is a self-contained page (no external assets) that polls
// /debug/cache.json and shows per-tier hit rates over the last interval.
func (a *App) debugPage(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "no-store")
	c.Response().Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
	return c.HTMLBlob(http.StatusOK, debugHTML)
}
