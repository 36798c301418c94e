package httpcache

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// t0 is the fixed time the policy tests count from.
var t0 = time.Date(2024, time.March, 4, 12, 0, 0, 0, time.UTC)

func httpDate(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

// hdr builds a header from name, value pairs; a name may repeat.
func hdr(kv ...string) http.Header {
	h := make(http.Header)
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// newReq returns a request for http://example.com/a with header h.
func newReq(method string, h http.Header) *http.Request {
	r := httptest.NewRequest(method, "http://example.com/a", nil)
	for k, v := range h {
		r.Header[k] = v
	}
	return r
}

func TestCacheable(t *testing.T) {
	tests := []struct {
		name       string
		p          Policy
		method     string
		header     http.Header
		body       string
		wantOK     bool
		wantReason string
	}{
		{name: "GET", method: "GET", wantOK: true},
		{name: "HEAD", method: "HEAD", wantOK: true},
		{name: "POST", method: "POST", wantReason: ReasonMethod},
		{name: "PUT", method: "PUT", wantReason: ReasonMethod},
		{name: "lower-case get is another method", method: "get", wantReason: ReasonMethod},
		{name: "GET with a body", method: "GET", body: "x", wantReason: ReasonRequestBody},
		{name: "GET with Cookie", method: "GET", header: hdr("Cookie", "session=1"), wantReason: ReasonCookie},
		{name: "GET with Cookie, AllowCookie", p: Policy{AllowCookie: true}, method: "GET",
			header: hdr("Cookie", "session=1"), wantOK: true},
		{name: "GET with an empty Cookie", method: "GET", header: hdr("Cookie", ""), wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			r := httptest.NewRequest(tt.method, "http://example.com/a", body)
			for k, v := range tt.header {
				r.Header[k] = v
			}
			ok, reason := tt.p.Cacheable(r)
			if ok != tt.wantOK || reason != tt.wantReason {
				t.Errorf("Cacheable(%s, %v) = %v, %q; want %v, %q", tt.method, tt.header, ok, reason, tt.wantOK, tt.wantReason)
			}
		})
	}
}

func TestStorable(t *testing.T) {
	const fresh = "max-age=60"
	tests := []struct {
		name       string
		p          Policy
		method     string // GET when empty
		reqHeader  http.Header
		body       string
		status     int
		header     http.Header
		wantOK     bool
		wantReason string
	}{
		{name: "200 with max-age", status: 200, header: hdr("Cache-Control", fresh), wantOK: true},

		// The request.
		{name: "POST not stored", method: "POST", status: 200, header: hdr("Cache-Control", fresh), wantReason: ReasonMethod},
		{name: "DELETE not stored", method: "DELETE", status: 200, header: hdr("Cache-Control", fresh), wantReason: ReasonMethod},
		{name: "GET with a body", body: "q=1", status: 200, header: hdr("Cache-Control", fresh), wantReason: ReasonRequestBody},
		{name: "request no-store", reqHeader: hdr("Cache-Control", "no-store"), status: 200,
			header: hdr("Cache-Control", fresh), wantReason: ReasonNoStore},
		{name: "request Cookie bypasses", reqHeader: hdr("Cookie", "sid=1"), status: 200,
			header: hdr("Cache-Control", "public, max-age=60"), wantReason: ReasonCookie},
		{name: "request Cookie with AllowCookie", p: Policy{AllowCookie: true}, reqHeader: hdr("Cookie", "sid=1"),
			status: 200, header: hdr("Cache-Control", fresh), wantOK: true},

		// Response directives.
		{name: "response no-store", status: 200, header: hdr("Cache-Control", "no-store, max-age=60"), wantReason: ReasonNoStore},
		{name: "response no-store on a second line", status: 200, header: hdr("Cache-Control", fresh, "Cache-Control", "no-store"),
			wantReason: ReasonNoStore},
		{name: "response private", status: 200, header: hdr("Cache-Control", "private, max-age=60"), wantReason: ReasonPrivate},
		{name: "response PRIVATE", status: 200, header: hdr("Cache-Control", "PRIVATE, max-age=60"), wantReason: ReasonPrivate},
		// The caller strips the fields named; the rest may be stored.
		{name: "response private with fields", status: 200, header: hdr("Cache-Control", `private="X-User", max-age=60`), wantOK: true},

		// Authorization (RFC 9111 §3.5).
		{name: "Authorization, plain max-age", reqHeader: hdr("Authorization", "Bearer t"), status: 200,
			header: hdr("Cache-Control", fresh), wantReason: ReasonAuthorization},
		{name: "Authorization with public", reqHeader: hdr("Authorization", "Bearer t"), status: 200,
			header: hdr("Cache-Control", "public, max-age=60"), wantOK: true},
		{name: "Authorization with must-revalidate", reqHeader: hdr("Authorization", "Bearer t"), status: 200,
			header: hdr("Cache-Control", "must-revalidate, max-age=60"), wantOK: true},
		{name: "Authorization with s-maxage", reqHeader: hdr("Authorization", "Bearer t"), status: 200,
			header: hdr("Cache-Control", "s-maxage=60"), wantOK: true},
		{name: "Authorization with proxy-revalidate only", reqHeader: hdr("Authorization", "Bearer t"), status: 200,
			header: hdr("Cache-Control", "proxy-revalidate, max-age=60"), wantReason: ReasonAuthorization},
		{name: "Authorization with public but private", reqHeader: hdr("Authorization", "Bearer t"), status: 200,
			header: hdr("Cache-Control", "public, private, max-age=60"), wantReason: ReasonPrivate},

		// Set-Cookie and Vary.
		{name: "Set-Cookie", status: 200, header: hdr("Cache-Control", "public, max-age=60", "Set-Cookie", "a=1"), wantReason: ReasonSetCookie},
		{name: "Set-Cookie with AllowSetCookie", p: Policy{AllowSetCookie: true}, status: 200,
			header: hdr("Cache-Control", fresh, "Set-Cookie", "a=1"), wantOK: true},
		{name: "Vary: *", status: 200, header: hdr("Cache-Control", fresh, "Vary", "*"), wantReason: ReasonVaryStar},
		{name: "Vary: *, among names", status: 200, header: hdr("Cache-Control", fresh, "Vary", "Accept-Encoding, *"), wantReason: ReasonVaryStar},
		{name: "Vary with names", status: 200, header: hdr("Cache-Control", fresh, "Vary", "Accept-Encoding"), wantOK: true},

		// Status codes.
		{name: "206", status: 206, header: hdr("Cache-Control", fresh), wantReason: ReasonStatus},
		{name: "100", status: 100, header: hdr("Cache-Control", fresh), wantReason: ReasonStatus},
		{name: "103", status: 103, header: hdr("Cache-Control", fresh), wantReason: ReasonStatus},
		{name: "status 0", status: 0, header: hdr("Cache-Control", fresh), wantReason: ReasonStatus},
		// Fixed: policy.go stored a 304 with max-age under the URL's key, so
		// one client's conditional request would answer everyone's
		// unconditional ones with an empty 304 (RFC 9110 §15.4.5: a 304
		// answers a conditional request; RFC 9111 §4.3.4: it updates a
		// stored response).
		{name: "304 with max-age", status: 304, header: hdr("Cache-Control", fresh, "ETag", `"v1"`), wantReason: ReasonStatus},
		{name: "500 with max-age", status: 500, header: hdr("Cache-Control", fresh), wantReason: ReasonStatus},
		{name: "503 with s-maxage", status: 503, header: hdr("Cache-Control", "s-maxage=60"), wantReason: ReasonStatus},
		{name: "500 without freshness", status: 500, wantReason: ReasonStatus},
		{name: "404 with max-age", status: 404, header: hdr("Cache-Control", fresh), wantOK: true},
		{name: "404 without freshness", status: 404, wantReason: ReasonNoFreshness},
		{name: "404 with DefaultTTL", p: Policy{DefaultTTL: time.Minute}, status: 404, wantOK: true},
		{name: "410 with Expires", status: 410, header: hdr("Expires", httpDate(t0.Add(time.Hour)), "Date", httpDate(t0)), wantOK: true},
		// RFC 9111 §3 allows storing any final status with explicit
		// freshness; the policy keeps 4xx (not 5xx) with explicit freshness.
		{name: "400 with max-age", status: 400, header: hdr("Cache-Control", fresh), wantOK: true},
		{name: "403 with s-maxage", status: 403, header: hdr("Cache-Control", "s-maxage=10"), wantOK: true},
		{name: "400 without freshness", status: 400, wantReason: ReasonStatus},
		{name: "400 with DefaultTTL only", p: Policy{DefaultTTL: time.Minute}, status: 400, wantReason: ReasonStatus},
		{name: "400 with ETag only", status: 400, header: hdr("ETag", `"e"`), wantReason: ReasonStatus},
		{name: "302 with max-age", status: 302, header: hdr("Cache-Control", fresh), wantOK: true},
		{name: "302 without freshness", status: 302, wantReason: ReasonStatus},
		// 501 is heuristically cacheable (RFC 9110 §15.1), so the "no 5xx"
		// rule does not reach it: stored with max-age or a DefaultTTL.
		{name: "501 with max-age", status: 501, header: hdr("Cache-Control", fresh), wantOK: true},
		{name: "501 with DefaultTTL", p: Policy{DefaultTTL: time.Minute}, status: 501, wantOK: true},
		{name: "301 with max-age", status: 301, header: hdr("Cache-Control", fresh), wantOK: true},
		{name: "204 with max-age", status: 204, header: hdr("Cache-Control", fresh), wantOK: true},

		// Freshness of a default-cacheable status.
		{name: "200 without freshness, no DefaultTTL", status: 200, wantReason: ReasonNoFreshness},
		{name: "200 with ETag only (for revalidation)", status: 200, header: hdr("ETag", `"v1"`), wantOK: true},
		{name: "200 with Last-Modified only", status: 200, header: hdr("Last-Modified", httpDate(t0)), wantOK: true},
		{name: "200 with DefaultTTL", p: Policy{DefaultTTL: time.Minute}, status: 200, wantOK: true},
		{name: "200 with negative DefaultTTL", p: Policy{DefaultTTL: -time.Minute}, status: 200, wantReason: ReasonNoFreshness},
		{name: "200 with public only", status: 200, header: hdr("Cache-Control", "public"), wantOK: true},
		{name: "200 with s-maxage", status: 200, header: hdr("Cache-Control", "s-maxage=5"), wantOK: true},
		{name: "200 with max-age=0", status: 200, header: hdr("Cache-Control", "max-age=0"), wantOK: true},
		{name: "200 with malformed max-age (stored, stale)", status: 200, header: hdr("Cache-Control", "max-age=soon"), wantOK: true},
		{name: "200 with Expires", status: 200, header: hdr("Expires", httpDate(t0)), wantOK: true},
		{name: "200 with invalid Expires (stored, stale)", status: 200, header: hdr("Expires", "0"), wantOK: true},
		// Without a validator, revalidating is a full fetch: not stored.
		{name: "200 with no-cache only", status: 200, header: hdr("Cache-Control", "no-cache"), wantReason: ReasonNoFreshness},
		{name: "200 with no-cache and ETag", status: 200, header: hdr("Cache-Control", "no-cache", "ETag", `"v1"`), wantOK: true},
		{name: "200 with must-revalidate only", status: 200, header: hdr("Cache-Control", "must-revalidate"), wantReason: ReasonNoFreshness},

		// Key keys HEAD as GET, so a stored HEAD response (no body) would
		// answer later GETs: only GET responses are stored.
		{name: "HEAD 200 with max-age", method: "HEAD", status: 200, header: hdr("Cache-Control", fresh), wantReason: ReasonMethod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			r := httptest.NewRequest(method, "http://example.com/a", body)
			for k, v := range tt.reqHeader {
				r.Header[k] = v
			}
			h := tt.header
			if h == nil {
				h = http.Header{}
			}
			ok, reason := tt.p.Storable(r, tt.status, h)
			if ok != tt.wantOK || reason != tt.wantReason {
				t.Errorf("%+v.Storable(%s %v, %d, %v) = %v, %q; want %v, %q",
					tt.p, method, tt.reqHeader, tt.status, h, ok, reason, tt.wantOK, tt.wantReason)
			}
		})
	}
}

func TestLifetime(t *testing.T) {
	date := httpDate(t0)
	tests := []struct {
		name   string
		p      Policy
		header http.Header
		want   time.Duration
	}{
		{"nothing", Policy{}, hdr(), 0},
		{"DefaultTTL fallback", Policy{DefaultTTL: time.Minute}, hdr(), time.Minute},
		{"DefaultTTL with only a validator", Policy{DefaultTTL: time.Minute}, hdr("ETag", `"x"`), time.Minute},
		{"max-age", Policy{}, hdr("Cache-Control", "max-age=120"), 120 * time.Second},
		{"max-age over DefaultTTL", Policy{DefaultTTL: time.Hour}, hdr("Cache-Control", "max-age=120"), 120 * time.Second},
		{"max-age=0 over DefaultTTL", Policy{DefaultTTL: time.Hour}, hdr("Cache-Control", "max-age=0"), 0},
		{"s-maxage over max-age", Policy{}, hdr("Cache-Control", "max-age=120, s-maxage=30"), 30 * time.Second},
		{"s-maxage over a larger max-age on another line", Policy{}, hdr("Cache-Control", "s-maxage=300", "Cache-Control", "max-age=30"), 300 * time.Second},
		{"max-age over Expires", Policy{}, hdr("Cache-Control", "max-age=10", "Expires", httpDate(t0.Add(time.Hour)), "Date", date), 10 * time.Second},
		{"s-maxage over Expires", Policy{}, hdr("Cache-Control", "s-maxage=10", "Expires", httpDate(t0.Add(time.Hour)), "Date", date), 10 * time.Second},
		{"Expires minus Date", Policy{}, hdr("Expires", httpDate(t0.Add(time.Hour)), "Date", date), time.Hour},
		{"Expires over DefaultTTL", Policy{DefaultTTL: time.Minute}, hdr("Expires", httpDate(t0.Add(time.Hour)), "Date", date), time.Hour},
		{"Expires before Date", Policy{}, hdr("Expires", httpDate(t0.Add(-time.Hour)), "Date", date), 0},
		{"Expires equal to Date", Policy{}, hdr("Expires", date, "Date", date), 0},
		{"Expires in RFC 850 form", Policy{}, hdr("Expires", "Monday, 04-Mar-24 13:00:00 GMT", "Date", date), time.Hour},
		{"Expires in asctime form", Policy{}, hdr("Expires", "Mon Mar  4 12:30:00 2024", "Date", date), 30 * time.Minute},
		{"invalid Expires is expired", Policy{DefaultTTL: time.Hour}, hdr("Expires", "0", "Date", date), 0},
		{"invalid Expires, text", Policy{}, hdr("Expires", "tomorrow", "Date", date), 0},
		{"invalid Date", Policy{}, hdr("Expires", httpDate(t0.Add(time.Hour)), "Date", "yesterday"), 0},
		// RFC 9110 §6.6.1: without Date, the time received stands for it.
		{"Expires without Date", Policy{}, hdr("Expires", httpDate(t0.Add(time.Hour))), time.Hour},
		{"no-cache is 0", Policy{}, hdr("Cache-Control", "no-cache, max-age=600"), 0},
		{"no-cache is 0 over DefaultTTL", Policy{DefaultTTL: time.Hour}, hdr("Cache-Control", "no-cache"), 0},
		{"no-cache with fields keeps max-age", Policy{}, hdr("Cache-Control", `no-cache="Set-Cookie", max-age=600`), 600 * time.Second},
		{"malformed max-age is 0 over DefaultTTL", Policy{DefaultTTL: time.Hour}, hdr("Cache-Control", "max-age=abc"), 0},
		{"malformed max-age over Expires", Policy{}, hdr("Cache-Control", "max-age=abc", "Expires", httpDate(t0.Add(time.Hour)), "Date", date), 0},
		{"conflicting max-age is 0", Policy{}, hdr("Cache-Control", "max-age=60, max-age=120"), 0},
		{"max-age over 2^31 capped", Policy{}, hdr("Cache-Control", "max-age=9999999999"), maxDelta},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.Lifetime(tt.header, t0); got != tt.want {
				t.Errorf("%+v.Lifetime(%v) = %v, want %v", tt.p, tt.header, got, tt.want)
			}
		})
	}
}

func TestAge(t *testing.T) {
	s := time.Second
	tests := []struct {
		name                     string
		header                   http.Header
		requested, received, now time.Time
		want                     time.Duration
	}{
		{"nothing", hdr(), t0, t0, t0, 0},
		{"resident time", hdr(), t0, t0, t0.Add(100 * s), 100 * s},
		{"response delay", hdr(), t0, t0.Add(2 * s), t0.Add(2 * s), 2 * s},
		{"apparent age from Date", hdr("Date", httpDate(t0)), t0.Add(5 * s), t0.Add(5 * s), t0.Add(5 * s), 5 * s},
		{"Age header plus delay", hdr("Age", "10", "Date", httpDate(t0.Add(3*s))), t0.Add(1 * s), t0.Add(3 * s), t0.Add(3 * s), 12 * s},
		// RFC 9111 §4.2.3 in full: apparent 3 s, corrected 10+2 = 12 s,
		// initial 12 s, resident 100 s.
		{"all terms, corrected age wins", hdr("Age", "10", "Date", httpDate(t0)), t0.Add(1 * s), t0.Add(3 * s), t0.Add(103 * s), 112 * s},
		// apparent 60 s, corrected 5+1 = 6 s, initial 60 s, resident 40 s.
		{"all terms, apparent age wins", hdr("Age", "5", "Date", httpDate(t0)), t0.Add(59 * s), t0.Add(60 * s), t0.Add(100 * s), 100 * s},
		{"Date after received (clock skew)", hdr("Date", httpDate(t0.Add(time.Hour))), t0, t0, t0.Add(7 * s), 7 * s},
		{"received before requested", hdr("Age", "4"), t0.Add(10 * s), t0, t0, 4 * s},
		{"now before received", hdr("Age", "4"), t0, t0, t0.Add(-time.Hour), 4 * s},
		{"invalid Date ignored", hdr("Date", "yesterday", "Age", "3"), t0, t0, t0, 3 * s},
		{"Age malformed", hdr("Age", "ten"), t0, t0, t0, 0},
		{"Age negative", hdr("Age", "-5"), t0, t0, t0, 0},
		// Fixed: strconv.ParseInt took "+5" (not delta-seconds, RFC 9111
		// §5.1); now ignored.
		{"Age with a sign", hdr("Age", "+5"), t0, t0, t0, 0},
		{"Age fraction", hdr("Age", "1.5"), t0, t0, t0, 0},
		{"Age zero", hdr("Age", "0"), t0, t0, t0, 0},
		{"Age list takes the first", hdr("Age", "5, 10"), t0, t0, t0, 5 * s},
		{"Age on two lines takes the first", hdr("Age", "5", "Age", "10"), t0, t0, t0, 5 * s},
		{"Age 2^31-1", hdr("Age", "2147483647"), t0, t0, t0, 2147483647 * s},
		{"Age 2^31", hdr("Age", "2147483648"), t0, t0, t0, maxDelta},
		// Fixed: an Age too large for int64 failed strconv.ParseInt and
		// counted as 0, so a response the origin said was ancient was
		// fresh. RFC 9111 §1.2.2: it counts as 2^31 s.
		{"Age over int64", hdr("Age", "99999999999999999999"), t0, t0, t0, maxDelta},
		// Fixed: received minus a Date in year 1 saturates time.Duration;
		// adding the resident time overflowed to a negative age (fresh).
		// RFC 9111 §1.2.2: on overflow, 2^31 s.
		{"Date in year 1", hdr("Date", "Mon, 01 Jan 0001 00:00:00 GMT"), t0, t0, t0.Add(s), maxDelta + s},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Age(tt.header, tt.requested, tt.received, tt.now)
			if got != tt.want {
				t.Errorf("Age(%v, requested %v, received %v, now %v) = %v, want %v",
					tt.header, tt.requested.Sub(t0), tt.received.Sub(t0), tt.now.Sub(t0), got, tt.want)
			}
		})
	}
}

func TestUsable(t *testing.T) {
	s := time.Second
	tests := []struct {
		name          string
		reqHeader     http.Header
		header        http.Header
		age, lifetime time.Duration
		want          Use
	}{
		{"fresh", hdr(), hdr("Cache-Control", "max-age=60"), 10 * s, 60 * s, Serve},
		{"fresh by 1ns", hdr(), hdr(), 60*s - 1, 60 * s, Serve},
		{"age equals lifetime is stale", hdr(), hdr(), 60 * s, 60 * s, Revalidate},
		{"lifetime 0", hdr(), hdr("ETag", `"x"`), 0, 0, Revalidate},
		{"stale", hdr(), hdr(), 70 * s, 60 * s, Revalidate},

		// Revalidation asked for.
		{"request no-cache", hdr("Cache-Control", "no-cache"), hdr(), 0, 60 * s, Revalidate},
		{"request NO-CACHE", hdr("Cache-Control", "NO-CACHE"), hdr(), 0, 60 * s, Revalidate},
		{"Pragma: no-cache without Cache-Control", hdr("Pragma", "no-cache"), hdr(), 0, 60 * s, Revalidate},
		{"Pragma: no-cache in another case, in a list", hdr("Pragma", "x-foo, NO-CACHE"), hdr(), 0, 60 * s, Revalidate},
		{"Pragma: no-cache ignored with Cache-Control", hdr("Pragma", "no-cache", "Cache-Control", "max-stale=5"), hdr(), 0, 60 * s, Serve},
		{"response no-cache", hdr(), hdr("Cache-Control", "no-cache"), 0, 60 * s, Revalidate},
		// Field-qualified no-cache: the fields are stripped when stored (StoredHeader).
		{"response no-cache with fields", hdr(), hdr("Cache-Control", `no-cache="Set-Cookie"`), 0, 60 * s, Serve},
		{"response no-cache beats max-stale", hdr("Cache-Control", "max-stale"), hdr("Cache-Control", "no-cache"), 70 * s, 60 * s, Revalidate},

		// Request max-age and min-fresh.
		{"request max-age exceeded", hdr("Cache-Control", "max-age=5"), hdr(), 10 * s, 60 * s, Revalidate},
		{"request max-age met", hdr("Cache-Control", "max-age=10"), hdr(), 10 * s, 60 * s, Serve},
		{"request max-age=0, age 1s", hdr("Cache-Control", "max-age=0"), hdr(), s, 60 * s, Revalidate},
		{"request max-age malformed is 0", hdr("Cache-Control", "max-age=x"), hdr(), s, 60 * s, Revalidate},
		{"request max-age exceeded beats max-stale", hdr("Cache-Control", "max-age=5, max-stale"), hdr(), 10 * s, 60 * s, Revalidate},
		{"min-fresh not met", hdr("Cache-Control", "min-fresh=30"), hdr(), 40 * s, 60 * s, Revalidate},
		{"min-fresh just met", hdr("Cache-Control", "min-fresh=20"), hdr(), 40 * s, 60 * s, Serve},
		{"min-fresh malformed ignored", hdr("Cache-Control", "min-fresh=x"), hdr(), 40 * s, 60 * s, Serve},

		// Stale, and what may still serve it.
		{"must-revalidate beats max-stale", hdr("Cache-Control", "max-stale=100"), hdr("Cache-Control", "must-revalidate"), 70 * s, 60 * s, Revalidate},
		{"proxy-revalidate beats max-stale", hdr("Cache-Control", "max-stale=100"), hdr("Cache-Control", "proxy-revalidate"), 70 * s, 60 * s, Revalidate},
		{"s-maxage beats max-stale", hdr("Cache-Control", "max-stale=100"), hdr("Cache-Control", "s-maxage=60"), 70 * s, 60 * s, Revalidate},
		{"must-revalidate beats stale-while-revalidate", hdr(), hdr("Cache-Control", "must-revalidate, stale-while-revalidate=100"), 70 * s, 60 * s, Revalidate},
		{"must-revalidate while fresh", hdr(), hdr("Cache-Control", "must-revalidate"), 10 * s, 60 * s, Serve},
		{"max-stale within", hdr("Cache-Control", "max-stale=20"), hdr(), 70 * s, 60 * s, ServeStale},
		{"max-stale at the edge", hdr("Cache-Control", "max-stale=20"), hdr(), 80 * s, 60 * s, ServeStale},
		{"max-stale past", hdr("Cache-Control", "max-stale=20"), hdr(), 81 * s, 60 * s, Revalidate},
		{"max-stale without value", hdr("Cache-Control", "max-stale"), hdr(), 400 * 24 * time.Hour, 60 * s, ServeStale},
		{"max-stale malformed ignored", hdr("Cache-Control", "max-stale=x"), hdr(), 70 * s, 60 * s, Revalidate},
		{"stale-while-revalidate within", hdr(), hdr("Cache-Control", "max-age=60, stale-while-revalidate=30"), 70 * s, 60 * s, ServeStale},
		{"stale-while-revalidate at the edge", hdr(), hdr("Cache-Control", "max-age=60, stale-while-revalidate=30"), 90 * s, 60 * s, ServeStale},
		{"stale-while-revalidate past", hdr(), hdr("Cache-Control", "max-age=60, stale-while-revalidate=30"), 91 * s, 60 * s, Revalidate},
		{"max-stale past, stale-while-revalidate within", hdr("Cache-Control", "max-stale=5"), hdr("Cache-Control", "stale-while-revalidate=30"), 70 * s, 60 * s, ServeStale},
		{"stale-if-error alone does not serve stale", hdr(), hdr("Cache-Control", "stale-if-error=600"), 70 * s, 60 * s, Revalidate},
		// RFC 9111 §5.2.1.1: with request max-age and no max-stale, the
		// client does not want a stale response.
		{"request max-age with stale-while-revalidate", hdr("Cache-Control", "max-age=100"), hdr("Cache-Control", "stale-while-revalidate=30"), 70 * s, 60 * s, Revalidate},
		{"min-fresh=0 forbids stale", hdr("Cache-Control", "min-fresh=0"), hdr("Cache-Control", "stale-while-revalidate=30"), 70 * s, 60 * s, Revalidate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Usable(newReq("GET", tt.reqHeader), tt.header, tt.age, tt.lifetime)
			if got != tt.want {
				t.Errorf("Usable(req %v, %v, age %v, lifetime %v) = %v, want %v",
					tt.reqHeader, tt.header, tt.age, tt.lifetime, useName(got), useName(tt.want))
			}
		})
	}
}

func useName(u Use) string {
	switch u {
	case Serve:
		return "Serve"
	case ServeStale:
		return "ServeStale"
	case Revalidate:
		return "Revalidate"
	}
	return "Use(?)"
}

func TestStaleIfError(t *testing.T) {
	s := time.Second
	tests := []struct {
		name      string
		reqHeader http.Header
		header    http.Header
		staleness time.Duration
		want      bool
	}{
		{"no directive", hdr(), hdr("Cache-Control", "max-age=60"), s, false},
		{"response window, within", hdr(), hdr("Cache-Control", "max-age=60, stale-if-error=600"), 300 * s, true},
		{"response window, at the edge", hdr(), hdr("Cache-Control", "stale-if-error=600"), 600 * s, true},
		{"response window, past", hdr(), hdr("Cache-Control", "stale-if-error=600"), 601 * s, false},
		{"response window 0, just stale", hdr(), hdr("Cache-Control", "stale-if-error=0"), 0, true},
		{"request window, within", hdr("Cache-Control", "stale-if-error=60"), hdr(), 30 * s, true},
		{"request window, past", hdr("Cache-Control", "stale-if-error=60"), hdr(), 61 * s, false},
		{"request window past, response within", hdr("Cache-Control", "stale-if-error=10"), hdr("Cache-Control", "stale-if-error=600"), 30 * s, true},
		{"response window past, request within", hdr("Cache-Control", "stale-if-error=600"), hdr("Cache-Control", "stale-if-error=10"), 30 * s, true},
		{"malformed response window", hdr(), hdr("Cache-Control", "stale-if-error=soon"), s, false},
		{"must-revalidate forbids", hdr(), hdr("Cache-Control", "must-revalidate, stale-if-error=600"), s, false},
		{"must-revalidate forbids the request's", hdr("Cache-Control", "stale-if-error=600"), hdr("Cache-Control", "must-revalidate"), s, false},
		{"proxy-revalidate forbids", hdr(), hdr("Cache-Control", "proxy-revalidate, stale-if-error=600"), s, false},
		{"s-maxage forbids", hdr(), hdr("Cache-Control", "s-maxage=60, stale-if-error=600"), s, false},
		// Fixed: RFC 9111 §4.2.4 and §5.2.2.4: a no-cache response must not
		// be used without successful validation; StaleIfError ignored it.
		{"no-cache forbids the request's", hdr("Cache-Control", "stale-if-error=600"), hdr("Cache-Control", "no-cache"), s, false},
		{"no-cache forbids the response's", hdr(), hdr("Cache-Control", "no-cache, stale-if-error=600"), s, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := StaleIfError(newReq("GET", tt.reqHeader), tt.header, tt.staleness); got != tt.want {
				t.Errorf("StaleIfError(req %v, %v, %v) = %v, want %v", tt.reqHeader, tt.header, tt.staleness, got, tt.want)
			}
		})
	}
}

func TestStoredHeader(t *testing.T) {
	h := http.Header{
		"Cache-Control": {`max-age=60, private="X-User", no-cache="X-Token"`},
		"X-User":        {"alice"},
		"X-Token":       {"t"},
		"Etag":          {`"v"`},
	}
	got := StoredHeader(h)
	if got.Get("X-User") != "" || got.Get("X-Token") != "" || got.Get("Etag") == "" {
		t.Errorf("StoredHeader = %v, want X-User and X-Token gone, the rest kept", got)
	}
	if h.Get("X-User") == "" {
		t.Errorf("StoredHeader changed its argument")
	}
}
