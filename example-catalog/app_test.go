package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestGetProductIsCached(t *testing.T) {
	for _, mode := range []string{"l1-only", "redis"} {
		t.Run(mode, func(t *testing.T) {
			var rdb redis.UniversalClient
			if mode == "redis" {
				rdb = redis.NewClient(&redis.Options{Addr: redistest.Addr(t)})
				defer rdb.Close()
			}
			db := newStore(100, 0)
			a, err := newApp(rdb, redistest.Namespace(t), db, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer a.cache.Close()
			// Real HTTP, so routing and JSON go through the same path as in production.
			srv := httptest.NewServer(a.routes())
			defer srv.Close()

			for range 3 {
				var p Product
				if code := getJSON(t, srv.URL+"/products/7", &p); code != http.StatusOK || p.ID != 7 || p.Version != 1 {
					t.Fatalf("GET /products/7 = %d %+v", code, p)
				}
			}
			if n := db.queries.Load(); n != 1 {
				t.Errorf("database queries = %d, want 1", n)
			}
			for path, want := range map[string]int{"/products/999": 404, "/products/x": 400} {
				if code := getJSON(t, srv.URL+path, nil); code != want {
					t.Errorf("GET %s = %d, want %d", path, code, want)
				}
			}
		})
	}
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v in %q", url, err, body)
		}
	}
	return resp.StatusCode
}

func TestMain(m *testing.M) { redistest.Main(m) }
