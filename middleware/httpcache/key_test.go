package httpcache

import (
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// joinKey writes parts the way Key does: each one length-prefixed.
func joinKey(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(strconv.Itoa(len(p)))
		b.WriteByte(':')
		b.WriteString(p)
	}
	return b.String()
}

func TestKey(t *testing.T) {
	trust := KeyConfig{TrustForwarded: true}
	tests := []struct {
		name   string
		method string
		target string
		header http.Header
		cfg    KeyConfig
		want   string
	}{
		{name: "plain GET", target: "http://example.com/a?b=1",
			want: joinKey("GET", "http", "example.com", "/a", "b=1")},
		{name: "origin-form target", target: "/a",
			want: joinKey("GET", "http", "example.com", "/a", "")},
		{name: "empty path is /", target: "http://example.com",
			want: joinKey("GET", "http", "example.com", "/", "")},
		{name: "HEAD keyed as GET", method: http.MethodHead, target: "http://example.com/a",
			want: joinKey("GET", "http", "example.com", "/a", "")},
		{name: "other methods kept", method: "OPTIONS", target: "http://example.com/a",
			want: joinKey("OPTIONS", "http", "example.com", "/a", "")},

		// Scheme.
		{name: "https from TLS", target: "https://example.com/a",
			want: joinKey("GET", "https", "example.com", "/a", "")},
		{name: "X-Forwarded-Proto ignored by default", target: "http://example.com/a",
			header: http.Header{"X-Forwarded-Proto": {"https"}},
			want:   joinKey("GET", "http", "example.com", "/a", "")},
		{name: "X-Forwarded-Proto trusted", target: "http://example.com/a", cfg: trust,
			header: http.Header{"X-Forwarded-Proto": {"HTTPS"}},
			want:   joinKey("GET", "https", "example.com", "/a", "")},
		{name: "X-Forwarded-Proto trusted, first of a list", target: "https://example.com/a", cfg: trust,
			header: http.Header{"X-Forwarded-Proto": {"http, https"}},
			want:   joinKey("GET", "http", "example.com", "/a", "")},
		{name: "X-Forwarded-Proto trusted but not http(s)", target: "https://example.com/a", cfg: trust,
			header: http.Header{"X-Forwarded-Proto": {"ftp"}},
			want:   joinKey("GET", "https", "example.com", "/a", "")},

		// Host.
		{name: "X-Forwarded-Host ignored by default", target: "http://example.com/a",
			header: http.Header{"X-Forwarded-Host": {"evil.example"}},
			want:   joinKey("GET", "http", "example.com", "/a", "")},
		{name: "X-Forwarded-Host trusted", target: "http://example.com/a", cfg: trust,
			header: http.Header{"X-Forwarded-Host": {"Public.Example, internal:8080"}},
			want:   joinKey("GET", "http", "Public.Example", "/a", "")},
		{name: "X-Forwarded-Host and Proto trusted, port kept", target: "http://internal:8080/a", cfg: trust,
			header: http.Header{"X-Forwarded-Host": {"public.example:443"}, "X-Forwarded-Proto": {"https"}},
			want:   joinKey("GET", "https", "public.example:443", "/a", "")},
		{name: "empty X-Forwarded-Host trusted falls back to Host", target: "http://example.com/a", cfg: trust,
			header: http.Header{"X-Forwarded-Host": {""}},
			want:   joinKey("GET", "http", "example.com", "/a", "")},
		// The host as sent: Echo picks a virtual host's router by the exact
		// Host, so two spellings may get two different responses.
		{name: "host case kept", target: "http://EXAMPLE.Com/a",
			want: joinKey("GET", "http", "EXAMPLE.Com", "/a", "")},
		{name: "http default port kept", target: "http://example.com:80/a",
			want: joinKey("GET", "http", "example.com:80", "/a", "")},
		{name: "https default port kept", target: "https://example.com:443/a",
			want: joinKey("GET", "https", "example.com:443", "/a", "")},
		{name: "443 kept for http", target: "http://example.com:443/a",
			want: joinKey("GET", "http", "example.com:443", "/a", "")},
		{name: "80 kept for https", target: "https://example.com:80/a",
			want: joinKey("GET", "https", "example.com:80", "/a", "")},
		{name: "non-default port kept", target: "http://example.com:8080/a",
			want: joinKey("GET", "http", "example.com:8080", "/a", "")},
		{name: "IPv6", target: "http://[2001:DB8::1]/a",
			want: joinKey("GET", "http", "[2001:DB8::1]", "/a", "")},
		{name: "IPv6 default port kept", target: "http://[::1]:80/a",
			want: joinKey("GET", "http", "[::1]:80", "/a", "")},
		{name: "IPv6 https default port kept", target: "https://[::1]:443/a",
			want: joinKey("GET", "https", "[::1]:443", "/a", "")},
		{name: "IPv6 non-default port kept", target: "http://[::1]:8080/a",
			want: joinKey("GET", "http", "[::1]:8080", "/a", "")},
		{name: "IPv4", target: "http://192.0.2.1:80/a",
			want: joinKey("GET", "http", "192.0.2.1:80", "/a", "")},

		// Path and query, as sent.
		{name: "escaped slash kept", target: "http://example.com/a%2Fb",
			want: joinKey("GET", "http", "example.com", "/a%2Fb", "")},
		{name: "unescaped slash", target: "http://example.com/a/b",
			want: joinKey("GET", "http", "example.com", "/a/b", "")},
		{name: "escaped letter kept", target: "http://example.com/%61",
			want: joinKey("GET", "http", "example.com", "/%61", "")},
		{name: "dot segments kept", target: "http://example.com/a/../b",
			want: joinKey("GET", "http", "example.com", "/a/../b", "")},
		{name: "query not reordered", target: "http://example.com/a?b=2&a=1",
			want: joinKey("GET", "http", "example.com", "/a", "b=2&a=1")},
		{name: "query not decoded", target: "http://example.com/a?x=%20+y",
			want: joinKey("GET", "http", "example.com", "/a", "x=%20+y")},
		{name: "path that looks like a key part", target: "http://example.com/0:?3:GET",
			want: joinKey("GET", "http", "example.com", "/0:", "3:GET")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, tt.target, nil)
			for k, v := range tt.header {
				r.Header[k] = v
			}
			got, err := Key(r, tt.cfg)
			if err != nil {
				t.Fatalf("Key(%s %s) error = %v, want %q", r.Method, tt.target, err, tt.want)
			}
			if got != tt.want {
				t.Errorf("Key(%s %s) = %q, want %q", r.Method, tt.target, got, tt.want)
			}
		})
	}
}

func TestKeyDistinct(t *testing.T) {
	tests := []struct {
		name string
		a, b string // targets
	}{
		{"escaped slash", "/a%2Fb", "/a/b"},
		{"query order", "/a?x=1&y=2", "/a?y=2&x=1"},
		{"query vs none", "/a?x", "/a"},
		{"path case", "/A", "/a"},
		{"scheme", "http://example.com/", "https://example.com/"},
		{"port", "http://example.com/", "http://example.com:8080/"},
		{"path/query boundary", "/a?b", "/a%3Fb"},
		{"trailing slash", "/a", "/a/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka, err := Key(httptest.NewRequest("GET", tt.a, nil), KeyConfig{})
			if err != nil {
				t.Fatalf("Key(%s) error = %v", tt.a, err)
			}
			kb, err := Key(httptest.NewRequest("GET", tt.b, nil), KeyConfig{})
			if err != nil {
				t.Fatalf("Key(%s) error = %v", tt.b, err)
			}
			if ka == kb {
				t.Errorf("Key(%s) = Key(%s) = %q, want different keys", tt.a, tt.b, ka)
			}
		})
	}
}

func TestKeyErrors(t *testing.T) {
	withBody := func(r *http.Request) {
		r.Body = io.NopCloser(strings.NewReader("x"))
		r.ContentLength = 1
	}
	tests := []struct {
		name    string
		target  string
		host    string
		body    io.Reader
		modify  func(*http.Request)
		header  http.Header
		cfg     KeyConfig
		wantErr error
	}{
		{name: "GET with a body", target: "/a", body: strings.NewReader("hello"), wantErr: ErrUncacheableRequest},
		{name: "GET with a body of unknown length", target: "/a", modify: func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader("hello"))
			r.ContentLength = -1
		}, wantErr: ErrUncacheableRequest},
		{name: "GET with a chunked body", target: "/a", modify: func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader("hello"))
			r.ContentLength = 0
			r.TransferEncoding = []string{"chunked"}
		}, wantErr: ErrUncacheableRequest},
		{name: "HEAD with a body", target: "/a", modify: func(r *http.Request) {
			r.Method = http.MethodHead
			withBody(r)
		}, wantErr: ErrUncacheableRequest},
		{name: "no URL", target: "/a", modify: func(r *http.Request) { r.URL = nil }, wantErr: ErrUncacheableRequest},
		{name: "empty host", target: "/a", modify: func(r *http.Request) { r.Host = "" }, wantErr: ErrUncacheableRequest},
		{name: "space in host", target: "/a", host: "exa mple.com", wantErr: ErrUncacheableRequest},
		{name: "slash in host", target: "/a", host: "example.com/evil", wantErr: ErrUncacheableRequest},
		{name: "backslash in host", target: "/a", host: `example.com\evil`, wantErr: ErrUncacheableRequest},
		{name: "userinfo in host", target: "/a", host: "user@example.com", wantErr: ErrUncacheableRequest},
		{name: "query in host", target: "/a", host: "example.com?x", wantErr: ErrUncacheableRequest},
		{name: "fragment in host", target: "/a", host: "example.com#x", wantErr: ErrUncacheableRequest},
		{name: "CRLF in host", target: "/a", host: "example.com\r\nX: y", wantErr: ErrUncacheableRequest},
		{name: "bad trusted X-Forwarded-Host", target: "/a", cfg: KeyConfig{TrustForwarded: true},
			header: http.Header{"X-Forwarded-Host": {"evil.example/x"}}, wantErr: ErrUncacheableRequest},
		{name: "non-ASCII host", target: "/a", host: "\u212a.example", wantErr: ErrUncacheableRequest},
		{name: "invalid UTF-8 host", target: "/a", host: "\xff.example", wantErr: ErrUncacheableRequest},
		{name: "over the default 1024 bytes", target: "/" + strings.Repeat("a", 1024), wantErr: ErrKeyTooLong},
		{name: "over MaxKeyBytes", target: "/" + strings.Repeat("a", 20), cfg: KeyConfig{MaxKeyBytes: 40}, wantErr: ErrKeyTooLong},
		{name: "long query over MaxKeyBytes", target: "/?" + strings.Repeat("q", 100), cfg: KeyConfig{MaxKeyBytes: 100}, wantErr: ErrKeyTooLong},

		// Not errors.
		{name: "GET with NoBody", target: "/a", modify: func(r *http.Request) { r.Body = http.NoBody }},
		{name: "GET with a nil body", target: "/a", modify: func(r *http.Request) { r.Body = nil; r.ContentLength = 5 }},
		{name: "GET with an empty body", target: "/a", modify: func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader(""))
			r.ContentLength = 0
		}},
		{name: "exactly MaxKeyBytes", target: "/" + strings.Repeat("a", 3), cfg: KeyConfig{MaxKeyBytes: len(joinKey("GET", "http", "example.com", "/aaa", ""))}},
		// 3:GET4:http11:example.com993:/aaa…0: is 1024 bytes.
		{name: "exactly the default 1024 bytes", target: "/" + strings.Repeat("a", 992)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tt.target, tt.body)
			if tt.host != "" {
				r.Host = tt.host
			}
			for k, v := range tt.header {
				r.Header[k] = v
			}
			if tt.modify != nil {
				tt.modify(r)
			}
			got, err := Key(r, tt.cfg)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Key(%s %q) = %q, %v; want error %v", r.Method, tt.target, got, err, tt.wantErr)
			}
			if err != nil && got != "" {
				t.Errorf("Key(%s %q) = %q with error %v, want an empty key", r.Method, tt.target, got, err)
			}
			limit := tt.cfg.MaxKeyBytes
			if limit == 0 {
				limit = 1024
			}
			if err == nil && len(got) > limit {
				t.Errorf("Key(%s %q) has %d bytes, over the limit %d", r.Method, tt.target, len(got), limit)
			}
		})
	}
}

func TestVaryKey(t *testing.T) {
	const base = "base"
	req := func(h http.Header) *http.Request {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header = h
		return r
	}
	tests := []struct {
		name  string
		vary  []string
		a, b  http.Header
		equal bool
	}{
		{"different values", []string{"Accept-Encoding"},
			http.Header{"Accept-Encoding": {"gzip"}}, http.Header{"Accept-Encoding": {"br"}}, false},
		{"same values", []string{"Accept-Encoding"},
			http.Header{"Accept-Encoding": {"gzip"}}, http.Header{"Accept-Encoding": {"gzip"}}, true},
		{"whitespace around elements", []string{"Accept-Encoding"},
			http.Header{"Accept-Encoding": {" gzip ,  br "}}, http.Header{"Accept-Encoding": {"gzip,br"}}, true},
		{"lines joined as a list", []string{"Accept-Encoding"},
			http.Header{"Accept-Encoding": {"gzip", "br"}}, http.Header{"Accept-Encoding": {"gzip, br"}}, true},
		{"order matters", []string{"Accept-Encoding"},
			http.Header{"Accept-Encoding": {"gzip, br"}}, http.Header{"Accept-Encoding": {"br, gzip"}}, false},
		{"whitespace inside an element matters", []string{"Accept-Language"},
			http.Header{"Accept-Language": {"en US"}}, http.Header{"Accept-Language": {"enUS"}}, false},
		{"absent vs present", []string{"Accept-Encoding"},
			http.Header{}, http.Header{"Accept-Encoding": {"gzip"}}, false},
		{"both absent", []string{"Accept-Encoding"}, http.Header{}, http.Header{}, true},
		// RFC 9111 §4.1: a field absent from a request matches only a
		// request where it is absent too; an empty value is present.
		{"absent vs empty", []string{"Accept-Encoding"},
			http.Header{}, http.Header{"Accept-Encoding": {""}}, false},
		{"other headers ignored", []string{"Accept-Encoding"},
			http.Header{"Accept-Encoding": {"gzip"}, "Cookie": {"a=1"}},
			http.Header{"Accept-Encoding": {"gzip"}, "Cookie": {"a=2"}}, true},
		{"second name differs", []string{"Accept-Encoding", "Accept-Language"},
			http.Header{"Accept-Encoding": {"gzip"}, "Accept-Language": {"en"}},
			http.Header{"Accept-Encoding": {"gzip"}, "Accept-Language": {"de"}}, false},
		{"value moved between names", []string{"A", "B"},
			http.Header{"A": {"x,y"}, "B": {""}}, http.Header{"A": {"x"}, "B": {"y"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka := VaryKey(base, tt.vary, req(tt.a))
			kb := VaryKey(base, tt.vary, req(tt.b))
			if (ka == kb) != tt.equal {
				t.Errorf("VaryKey(%q, %q, %v) = %q\nVaryKey(%q, %q, %v) = %q\nequal = %v, want %v",
					base, tt.vary, tt.a, ka, base, tt.vary, tt.b, kb, ka == kb, tt.equal)
			}
			if !strings.HasPrefix(ka, base) || ka == base {
				t.Errorf("VaryKey(%q, %q, ...) = %q, want it to extend the key", base, tt.vary, ka)
			}
		})
	}
}

func TestVaryKeyWithoutVary(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Accept-Encoding", "gzip")
	for _, vary := range [][]string{nil, {}} {
		if got := VaryKey("k", vary, r); got != "k" {
			t.Errorf("VaryKey(%q, %q, r) = %q, want the key unchanged", "k", vary, got)
		}
	}
}

func TestParseVary(t *testing.T) {
	tests := []struct {
		name      string
		values    []string
		wantNames []string
		wantStar  bool
	}{
		{"none", nil, nil, false},
		{"empty", []string{""}, nil, false},
		{"one", []string{"accept-encoding"}, []string{"Accept-Encoding"}, false},
		{"canonical and sorted", []string{"user-agent, ACCEPT-LANGUAGE, accept-encoding"},
			[]string{"Accept-Encoding", "Accept-Language", "User-Agent"}, false},
		{"deduplicated across lines and case", []string{"Accept-Encoding, accept-encoding", "ACCEPT-ENCODING"},
			[]string{"Accept-Encoding"}, false},
		{"empty elements", []string{" , Origin,, "}, []string{"Origin"}, false},
		{"star", []string{"*"}, nil, true},
		{"star with names", []string{"Accept-Encoding, *"}, []string{"Accept-Encoding"}, true},
		{"star on a second line", []string{"Origin", " * "}, []string{"Origin"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names, star := ParseVary(tt.values)
			if !reflect.DeepEqual(names, tt.wantNames) || star != tt.wantStar {
				t.Errorf("ParseVary(%q) = %q, %v; want %q, %v", tt.values, names, star, tt.wantNames, tt.wantStar)
			}
		})
	}
}

// fuzzKeyConfig is small so that the fuzzer reaches ErrKeyTooLong.
var fuzzKeyConfig = KeyConfig{MaxKeyBytes: 256}

// keyTuple is what Key promises to tell apart: the method (HEAD as GET),
// the scheme, the host as sent,
// the escaped path ("/" for none) and the raw query.
type keyTuple struct{ method, scheme, host, path, query string }

// fuzzRequest builds the request for one fuzzed tuple; ok is false when
// url.Parse or http.NewRequest rejects it.
func fuzzRequest(method, host, path, query string, https bool) (r *http.Request, ok bool) {
	scheme := "http"
	if https {
		scheme = "https"
	}
	target := scheme + "://" + host + path
	if query != "" {
		target += "?" + query
	}
	if _, err := url.Parse(target); err != nil {
		return nil, false
	}
	r, err := http.NewRequest(method, target, nil)
	if err != nil {
		return nil, false
	}
	if https {
		r.TLS = &tls.ConnectionState{}
	}
	return r, true
}

// normalTuple computes r's keyTuple independently of Key.
func normalTuple(r *http.Request) keyTuple {
	t := keyTuple{method: r.Method, scheme: "http", host: r.Host, path: r.URL.EscapedPath(), query: r.URL.RawQuery}
	if t.method == http.MethodHead {
		t.method = http.MethodGet
	}
	if r.TLS != nil {
		t.scheme = "https"
	}
	if t.path == "" {
		t.path = "/"
	}
	return t
}

func FuzzKey(f *testing.F) {
	f.Add("GET", "example.com", "/a", "b=1", false, "HEAD", "EXAMPLE.com:80", "/a", "b=1", false)
	f.Add("GET", "example.com", "/a%2Fb", "", false, "GET", "example.com", "/a/b", "", false)
	f.Add("GET", "example.com:443", "/", "", true, "GET", "example.com", "/", "", true)
	f.Add("GET", "example.com:443", "/", "", false, "GET", "example.com", "/", "", true)
	f.Add("GET", "[::1]:80", "/x", "", false, "GET", "[::1]", "/x", "", false)
	f.Add("GET", "h", "/1:a", "2:b", false, "GET", "h", "/1:a2:b", "", false)
	f.Add("GET", "h", "/a", "b", false, "GET", "h", "/a%3Fb", "", false)
	f.Add("get", "h", "/", "", false, "GET", "h", "/", "", false)
	f.Add("GET", "h", "/"+strings.Repeat("x", 300), "", false, "GET", "h", "/", strings.Repeat("q", 300), false)
	f.Add("GET", "\xff.example", "/", "", false, "GET", "\xfe.example", "/", "", false)
	f.Add("GET", "\u212a.example", "/", "", false, "GET", "k.example", "/", "", false)
	f.Fuzz(func(t *testing.T,
		method1, host1, path1, query1 string, https1 bool,
		method2, host2, path2, query2 string, https2 bool,
	) {
		r1, ok1 := fuzzRequest(method1, host1, path1, query1, https1)
		r2, ok2 := fuzzRequest(method2, host2, path2, query2, https2)
		if !ok1 || !ok2 {
			t.Skip("url.Parse or http.NewRequest rejects the input")
		}
		k1, err1 := Key(r1, fuzzKeyConfig)
		k2, err2 := Key(r2, fuzzKeyConfig)
		for _, c := range []struct {
			r   *http.Request
			k   string
			err error
		}{{r1, k1, err1}, {r2, k2, err2}} {
			switch {
			case c.err != nil && !errors.Is(c.err, ErrKeyTooLong) && !errors.Is(c.err, ErrUncacheableRequest):
				t.Fatalf("Key(%s %s) error = %v, want ErrKeyTooLong or ErrUncacheableRequest", c.r.Method, c.r.URL, c.err)
			case c.err != nil && c.k != "":
				t.Fatalf("Key(%s %s) = %q with error %v, want an empty key", c.r.Method, c.r.URL, c.k, c.err)
			case c.err == nil && len(c.k) > fuzzKeyConfig.MaxKeyBytes:
				t.Fatalf("Key(%s %s) has %d bytes, over MaxKeyBytes %d", c.r.Method, c.r.URL, len(c.k), fuzzKeyConfig.MaxKeyBytes)
			}
		}
		if err1 != nil || err2 != nil {
			return
		}
		n1, n2 := normalTuple(r1), normalTuple(r2)
		if n1 != n2 && k1 == k2 {
			t.Fatalf("two requests share key %q:\n\t%s %s (Host %q) = %+v\n\t%s %s (Host %q) = %+v",
				k1, r1.Method, r1.URL, r1.Host, n1, r2.Method, r2.URL, r2.Host, n2)
		}
		if n1 == n2 && k1 != k2 {
			t.Fatalf("one normalized request %+v has two keys %q and %q", n1, k1, k2)
		}
	})
}
