package httpcache_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/tiercache/tiercache/middleware/httpcache"
)

func ExampleParseCacheControl() {
	h := http.Header{}
	h.Add("Cache-Control", `public, max-age=60, no-cache="Set-Cookie"`)
	h.Add("Cache-Control", "stale-while-revalidate=30")

	d := httpcache.ParseCacheControl(h.Values("Cache-Control"))
	fmt.Println("public:", d.Public)
	fmt.Println("max-age:", d.MaxAge.Value)
	fmt.Println("no-cache:", d.NoCache, d.NoCacheFields)
	fmt.Println("stale-while-revalidate:", d.StaleWhileRevalidate.Value)
	fmt.Println("s-maxage present:", d.SMaxAge.Present)
	// Output:
	// public: true
	// max-age: 1m0s
	// no-cache: false [Set-Cookie]
	// stale-while-revalidate: 30s
	// s-maxage present: false
}

func ExampleKey() {
	a := httptest.NewRequest(http.MethodHead, "http://Example.COM:80/a%2Fb?y=2&x=1", nil)
	b := httptest.NewRequest(http.MethodGet, "http://example.com/a/b?y=2&x=1", nil)

	ka, _ := httpcache.Key(a, httpcache.KeyConfig{})
	kb, _ := httpcache.Key(b, httpcache.KeyConfig{})
	fmt.Println(ka)
	fmt.Println(kb)

	// A response that varies on Accept-Encoding is stored per encoding.
	vary, _ := httpcache.ParseVary([]string{"accept-encoding"})
	b.Header.Set("Accept-Encoding", "gzip")
	fmt.Println(httpcache.VaryKey(kb, vary, b))
	// Output:
	// 3:GET4:http14:Example.COM:806:/a%2Fb7:y=2&x=1
	// 3:GET4:http11:example.com4:/a/b7:y=2&x=1
	// 3:GET4:http11:example.com4:/a/b7:y=2&x=1|vary15:Accept-Encoding=4:gzip
}

func ExamplePolicy_Storable() {
	p := httpcache.Policy{}
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)

	for _, resp := range []struct {
		status int
		cc     string
	}{
		{http.StatusOK, "public, max-age=60"},
		{http.StatusOK, "private, max-age=60"},
		{http.StatusOK, ""},
		{http.StatusNotFound, "max-age=10"},
		{http.StatusInternalServerError, "max-age=10"},
	} {
		h := http.Header{}
		if resp.cc != "" {
			h.Set("Cache-Control", resp.cc)
		}
		if ok, reason := p.Storable(req, resp.status, h); ok {
			fmt.Printf("%d %q: stored\n", resp.status, resp.cc)
		} else {
			fmt.Printf("%d %q: not stored (%s)\n", resp.status, resp.cc, reason)
		}
	}
	// Output:
	// 200 "public, max-age=60": stored
	// 200 "private, max-age=60": not stored (private)
	// 200 "": not stored (no-freshness)
	// 404 "max-age=10": stored
	// 500 "max-age=10": not stored (status)
}

func ExampleNotModified() {
	stored := http.Header{}
	stored.Set("ETag", `"v2"`)
	stored.Set("Last-Modified", "Mon, 04 Mar 2024 12:00:00 GMT")

	for _, inm := range []string{`"v1", W/"v2"`, `"v1"`} {
		req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
		req.Header.Set("If-None-Match", inm)
		fmt.Printf("If-None-Match: %s -> 304: %v\n", inm, httpcache.NotModified(req, stored))
	}

	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	req.Header.Set("If-Modified-Since", "Tue, 05 Mar 2024 00:00:00 GMT")
	fmt.Println("If-Modified-Since a day later -> 304:", httpcache.NotModified(req, stored))
	// Output:
	// If-None-Match: "v1", W/"v2" -> 304: true
	// If-None-Match: "v1" -> 304: false
	// If-Modified-Since a day later -> 304: true
}
