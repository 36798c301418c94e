package httpcache

import (
	"net/http"
	"testing"
	"time"
)

func TestParseETag(t *testing.T) {
	tests := []struct {
		in     string
		want   ETag
		wantOK bool
	}{
		{`"abc"`, ETag{Tag: `"abc"`}, true},
		{`W/"abc"`, ETag{Tag: `"abc"`, Weak: true}, true},
		{`""`, ETag{Tag: `""`}, true},
		{`W/""`, ETag{Tag: `""`, Weak: true}, true},
		{` "abc" `, ETag{Tag: `"abc"`}, true},
		{"\tW/\"abc\"\t", ETag{Tag: `"abc"`, Weak: true}, true},
		{`"a,b"`, ETag{Tag: `"a,b"`}, true},
		{`"xyzzy/1.0"`, ETag{Tag: `"xyzzy/1.0"`}, true},
		{"\"\x80\xff\"", ETag{Tag: "\"\x80\xff\""}, true}, // obs-text
		// NOTE: a space is not an etagc (RFC 9110 §8.8.3); ParseETag is
		// lenient and takes it.
		{`"a b"`, ETag{Tag: `"a b"`}, true},

		{``, ETag{}, false},
		{`"`, ETag{}, false},
		{`abc`, ETag{}, false},
		{`"abc`, ETag{}, false},
		{`abc"`, ETag{}, false},
		{`W/abc`, ETag{}, false},
		{`W/`, ETag{}, false},
		{`W/"`, ETag{}, false},
		{`w/"abc"`, ETag{}, false}, // W/ is case-sensitive
		{`W/ "abc"`, ETag{}, false},
		{`W/W/"abc"`, ETag{}, false},
		{`"a"b"`, ETag{}, false},
		{`"a", "b"`, ETag{}, false},
		{`*`, ETag{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := ParseETag(tt.in)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("ParseETag(%q) = %+v, %v; want %+v, %v", tt.in, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// TestETagMatch is the table of RFC 9110 §8.8.3.2, both ways round.
func TestETagMatch(t *testing.T) {
	tests := []struct {
		a, b         string
		strong, weak bool
	}{
		{`W/"1"`, `W/"1"`, false, true},
		{`W/"1"`, `W/"2"`, false, false},
		{`W/"1"`, `"1"`, false, true},
		{`"1"`, `W/"1"`, false, true},
		{`"1"`, `"1"`, true, true},
		{`"1"`, `"2"`, false, false},
		{`W/"1"`, `"2"`, false, false},
		{`""`, `""`, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.a+" vs "+tt.b, func(t *testing.T) {
			a, okA := ParseETag(tt.a)
			b, okB := ParseETag(tt.b)
			if !okA || !okB {
				t.Fatalf("ParseETag(%q), ParseETag(%q) ok = %v, %v; want both true", tt.a, tt.b, okA, okB)
			}
			if got := a.StrongMatch(b); got != tt.strong {
				t.Errorf("%s.StrongMatch(%s) = %v, want %v", tt.a, tt.b, got, tt.strong)
			}
			if got := a.WeakMatch(b); got != tt.weak {
				t.Errorf("%s.WeakMatch(%s) = %v, want %v", tt.a, tt.b, got, tt.weak)
			}
		})
	}
}

func TestNotModified(t *testing.T) {
	lm := time.Date(2024, time.March, 4, 12, 0, 0, 0, time.UTC)
	lastMod := httpDate(lm)
	tests := []struct {
		name      string
		method    string // GET when empty
		reqHeader http.Header
		header    http.Header
		want      bool
	}{
		// If-None-Match.
		{name: "exact strong match", reqHeader: hdr("If-None-Match", `"v1"`), header: hdr("ETag", `"v1"`), want: true},
		{name: "no match", reqHeader: hdr("If-None-Match", `"v2"`), header: hdr("ETag", `"v1"`)},
		{name: "tags are case-sensitive", reqHeader: hdr("If-None-Match", `"V1"`), header: hdr("ETag", `"v1"`)},
		{name: "weak request, strong stored", reqHeader: hdr("If-None-Match", `W/"v1"`), header: hdr("ETag", `"v1"`), want: true},
		{name: "strong request, weak stored", reqHeader: hdr("If-None-Match", `"v1"`), header: hdr("ETag", `W/"v1"`), want: true},
		{name: "both weak", reqHeader: hdr("If-None-Match", `W/"v1"`), header: hdr("ETag", `W/"v1"`), want: true},
		{name: "weak, different", reqHeader: hdr("If-None-Match", `W/"v2"`), header: hdr("ETag", `W/"v1"`)},
		{name: "list, match last", reqHeader: hdr("If-None-Match", `"a", W/"b", "v1"`), header: hdr("ETag", `"v1"`), want: true},
		{name: "list, match first", reqHeader: hdr("If-None-Match", `"v1","a"`), header: hdr("ETag", `"v1"`), want: true},
		{name: "list, no match", reqHeader: hdr("If-None-Match", `"a", "b"`), header: hdr("ETag", `"v1"`)},
		{name: "list on two lines", reqHeader: hdr("If-None-Match", `"a"`, "If-None-Match", `"v1"`), header: hdr("ETag", `"v1"`), want: true},
		{name: "comma inside a tag", reqHeader: hdr("If-None-Match", `"x", "a,b"`), header: hdr("ETag", `"a,b"`), want: true},
		{name: "comma inside a tag is not a split", reqHeader: hdr("If-None-Match", `"a,b"`), header: hdr("ETag", `"a"`)},
		{name: "list with empty elements", reqHeader: hdr("If-None-Match", ` , "v1" ,,`), header: hdr("ETag", `"v1"`), want: true},
		{name: "star", reqHeader: hdr("If-None-Match", "*"), header: hdr("ETag", `"v1"`), want: true},
		{name: "star without an ETag", reqHeader: hdr("If-None-Match", "*"), header: hdr(), want: true},
		{name: "no ETag on the response", reqHeader: hdr("If-None-Match", `"v1"`), header: hdr("Last-Modified", lastMod)},
		{name: "malformed ETag on the response", reqHeader: hdr("If-None-Match", `"v1"`), header: hdr("ETag", `v1`)},
		{name: "unquoted request tag", reqHeader: hdr("If-None-Match", `v1`), header: hdr("ETag", `"v1"`)},
		{name: "empty If-None-Match", reqHeader: hdr("If-None-Match", ""), header: hdr("ETag", `"v1"`)},
		{name: "If-None-Match makes If-Modified-Since ignored",
			reqHeader: hdr("If-None-Match", `"v2"`, "If-Modified-Since", lastMod),
			header:    hdr("ETag", `"v1"`, "Last-Modified", lastMod)},
		{name: "If-None-Match matches, If-Modified-Since says modified",
			reqHeader: hdr("If-None-Match", `"v1"`, "If-Modified-Since", httpDate(lm.Add(-time.Hour))),
			header:    hdr("ETag", `"v1"`, "Last-Modified", lastMod), want: true},
		{name: "HEAD", method: "HEAD", reqHeader: hdr("If-None-Match", `"v1"`), header: hdr("ETag", `"v1"`), want: true},

		// If-Modified-Since.
		{name: "If-Modified-Since equal", reqHeader: hdr("If-Modified-Since", lastMod), header: hdr("Last-Modified", lastMod), want: true},
		{name: "If-Modified-Since after", reqHeader: hdr("If-Modified-Since", httpDate(lm.Add(time.Second))), header: hdr("Last-Modified", lastMod), want: true},
		{name: "If-Modified-Since before", reqHeader: hdr("If-Modified-Since", httpDate(lm.Add(-time.Second))), header: hdr("Last-Modified", lastMod)},
		{name: "If-Modified-Since in RFC 850 form", reqHeader: hdr("If-Modified-Since", "Monday, 04-Mar-24 12:00:00 GMT"), header: hdr("Last-Modified", lastMod), want: true},
		{name: "If-Modified-Since invalid", reqHeader: hdr("If-Modified-Since", "yesterday"), header: hdr("Last-Modified", lastMod)},
		{name: "If-Modified-Since with two dates", reqHeader: hdr("If-Modified-Since", lastMod+", "+lastMod), header: hdr("Last-Modified", lastMod)},
		{name: "Last-Modified invalid", reqHeader: hdr("If-Modified-Since", lastMod), header: hdr("Last-Modified", "yesterday")},
		// RFC 9111 §4.3.2: without Last-Modified, compare with the Date.
		{name: "no Last-Modified, Date before If-Modified-Since", reqHeader: hdr("If-Modified-Since", lastMod),
			header: hdr("Date", httpDate(lm.Add(-time.Hour))), want: true},
		{name: "no Last-Modified, Date after If-Modified-Since", reqHeader: hdr("If-Modified-Since", lastMod),
			header: hdr("Date", httpDate(lm.Add(time.Hour)))},
		{name: "no validator at all", reqHeader: hdr("If-Modified-Since", lastMod), header: hdr()},
		{name: "not conditional", reqHeader: hdr(), header: hdr("ETag", `"v1"`, "Last-Modified", lastMod)},

		// Methods.
		{name: "POST never", method: "POST", reqHeader: hdr("If-None-Match", `"v1"`), header: hdr("ETag", `"v1"`)},
		{name: "POST with star never", method: "POST", reqHeader: hdr("If-None-Match", "*"), header: hdr("ETag", `"v1"`)},
		{name: "PUT with If-Modified-Since never", method: "PUT", reqHeader: hdr("If-Modified-Since", lastMod), header: hdr("Last-Modified", lastMod)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			if got := NotModified(newReq(method, tt.reqHeader), tt.header); got != tt.want {
				t.Errorf("NotModified(%s %v, %v) = %v, want %v", method, tt.reqHeader, tt.header, got, tt.want)
			}
		})
	}
}
