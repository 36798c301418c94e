package httpcache

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// KeyConfig says how Key reads a request.
type KeyConfig struct {
	// TrustForwarded makes Key take the scheme and host from
	// X-Forwarded-Proto and X-Forwarded-Host. Set it only behind a proxy
	// that sets both and strips them from clients: otherwise any client can
	// write a response into another host's or scheme's entry.
	TrustForwarded bool

	// MaxKeyBytes limits the key; a longer one is not cached.
	// Default: 1024.
	MaxKeyBytes int
}

// ErrKeyTooLong reports a request whose key is over KeyConfig.MaxKeyBytes.
var ErrKeyTooLong = errors.New("httpcache: cache key too long")

// ErrUncacheableRequest reports a request that Key refuses to key: one
// with a body, or with a malformed target.
var ErrUncacheableRequest = errors.New("httpcache: request not cacheable")

// Key returns the primary cache key of r: method, scheme, host, path and
// raw query, each length-prefixed so that no choice of path or query can
// collide with another request's key. The host, path and query are taken
// as the client sent them (no lowercasing, no default ports dropped, no
// decoding, no reordering): two spellings of a URL are two entries, never
// one entry for two resources. HEAD is keyed as GET,
// whose stored response it can be answered from.
//
// Nothing else of the request is in the key; a response's Vary adds the
// named request headers (see VaryKey).
func Key(r *http.Request, cfg KeyConfig) (string, error) {
	if r.URL == nil || r.Body != nil && r.Body != http.NoBody && (r.ContentLength != 0 || len(r.TransferEncoding) > 0) {
		return "", ErrUncacheableRequest
	}
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	scheme, host := Origin(r, cfg)
	if !validHost(host) {
		return "", ErrUncacheableRequest
	}
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	parts := [...]string{method, scheme, host, path, r.URL.RawQuery}
	var b strings.Builder
	n := 0
	for _, p := range parts {
		n += len(p) + 6
	}
	b.Grow(n)
	for _, part := range parts {
		b.WriteString(strconv.Itoa(len(part)))
		b.WriteByte(':')
		b.WriteString(part)
	}
	limit := cfg.MaxKeyBytes
	if limit == 0 {
		limit = 1024
	}
	if b.Len() > limit {
		return "", ErrKeyTooLong
	}
	return b.String(), nil
}

// Origin returns the scheme and host that Key keys r under: from the
// connection and the Host header, or from X-Forwarded-Proto and
// X-Forwarded-Host when cfg trusts them.
func Origin(r *http.Request, cfg KeyConfig) (scheme, host string) {
	scheme, host = "http", r.Host
	if r.TLS != nil {
		scheme = "https"
	}
	if cfg.TrustForwarded {
		if p := strings.ToLower(firstValue(get(r.Header, "X-Forwarded-Proto"))); p == "http" || p == "https" {
			scheme = p
		}
		if h := firstValue(get(r.Header, "X-Forwarded-Host")); h != "" {
			host = h
		}
	}
	return scheme, host
}

// VaryKey extends key with the values that r has for the request headers
// that a stored response's Vary names (vary as parsed by ParseVary), so
// that each variant has its own entry.
func VaryKey(key string, vary []string, r *http.Request) string {
	if len(vary) == 0 {
		return key
	}
	var b strings.Builder
	b.WriteString(key)
	b.WriteString("|vary")
	for _, name := range vary {
		b.WriteString(strconv.Itoa(len(name)))
		b.WriteByte(':')
		b.WriteString(name)
		lines := r.Header.Values(name)
		if lines == nil {
			// Absent matches only absent (RFC 9111 §4.1), not empty.
			b.WriteByte('-')
			continue
		}
		v := normalizeFieldValue(lines)
		b.WriteByte('=')
		b.WriteString(strconv.Itoa(len(v)))
		b.WriteByte(':')
		b.WriteString(v)
	}
	return b.String()
}

// ParseVary returns the canonical field names a response's Vary lists,
// sorted and without duplicates, and star for "Vary: *" (a response that
// must not be stored).
func ParseVary(values []string) (names []string, star bool) {
	seen := make(map[string]bool)
	for _, line := range values {
		for _, f := range strings.Split(line, ",") {
			f = strings.TrimSpace(f)
			switch {
			case f == "":
			case f == "*":
				star = true
			case !seen[http.CanonicalHeaderKey(f)]:
				seen[http.CanonicalHeaderKey(f)] = true
				names = append(names, http.CanonicalHeaderKey(f))
			}
		}
	}
	slices.Sort(names)
	return names, star
}

// normalizeFieldValue joins a field's lines as one comma-separated value
// with the whitespace around elements removed (RFC 9111 §4.1 lets a cache
// normalize so; it does not reorder, which could merge distinct variants).
func normalizeFieldValue(lines []string) string {
	var parts []string
	for _, l := range lines {
		for _, p := range strings.Split(l, ",") {
			parts = append(parts, strings.TrimSpace(p))
		}
	}
	return strings.Join(parts, ",")
}

// validHost reports a host that can be a key: printable ASCII without
// the characters that could not be in a host (or would let one host's
// key pass for another's). It is keyed as sent, not normalized: Echo picks
// a virtual host's router by the exact Host, so "API.example.com" and
// "api.example.com:80" may get other responses than "api.example.com".
func validHost(host string) bool {
	if host == "" {
		return false
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c >= 0x7f || strings.IndexByte("/\\?#@", c) >= 0 {
			return false
		}
	}
	return true
}

// get is h.Get for a name already in canonical form ("Etag", not "ETag"),
// as every name this package asks for is: it skips canonicalizing, a tenth
// of a cached hit. Headers are expected in canonical form, as net/http and
// http.Header.Set leave them.
func get(h http.Header, name string) string {
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func firstValue(v string) string {
	v, _, _ = strings.Cut(v, ",")
	return strings.TrimSpace(v)
}
