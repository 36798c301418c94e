package httpcache

import (
	"net/http"
	"strings"
)

// ETag is an entity tag (RFC 9110 §8.8.3): the opaque string, quotes
// included, and whether it is weak (W/ prefix).
type ETag struct {
	Tag  string
	Weak bool
}

// ParseETag parses one entity tag; ok is false when s is not one.
func ParseETag(s string) (e ETag, ok bool) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "W/") {
		e.Weak = true
		s = s[2:]
	}
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' || strings.Contains(s[1:len(s)-1], `"`) {
		return ETag{}, false
	}
	e.Tag = s
	return e, true
}

// StrongMatch is the strong comparison: both strong, same tag.
func (e ETag) StrongMatch(o ETag) bool { return !e.Weak && !o.Weak && e.Tag == o.Tag }

// WeakMatch is the weak comparison: same tag, weak or not.
func (e ETag) WeakMatch(o ETag) bool { return e.Tag == o.Tag }

// NotModified reports whether a conditional GET or HEAD req is answered by
// 304 Not Modified for a stored response with header h (RFC 9110 §13.1.2,
// §13.1.3, §13.2.2): If-None-Match, by weak comparison against the
// response's ETag ("*" matches any); else If-Modified-Since against its
// Last-Modified.
func NotModified(req *http.Request, h http.Header) bool {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return false
	}
	if inm := req.Header["If-None-Match"]; len(inm) > 0 {
		etag, ok := ParseETag(get(h, "Etag"))
		for _, line := range inm {
			for _, t := range splitETags(line) {
				if t == "*" {
					return true
				}
				if cand, valid := ParseETag(t); valid && ok && cand.WeakMatch(etag) {
					return true
				}
			}
		}
		return false // If-Modified-Since is ignored when If-None-Match is present
	}
	v := get(req.Header, "If-Modified-Since")
	if v == "" {
		return false
	}
	ims, err := http.ParseTime(v)
	if err != nil {
		return false
	}
	// Without Last-Modified, the stored Date stands for it (RFC 9111
	// §4.3.2): the response has not changed since then, as far as the
	// cache knows.
	last := get(h, "Last-Modified")
	if last == "" {
		last = get(h, "Date")
	}
	lm, err := http.ParseTime(last)
	return err == nil && !lm.After(ims)
}

// splitETags splits an If-None-Match line at the commas between entity
// tags (an entity tag cannot contain a quote, so a comma inside quotes is
// part of a tag).
func splitETags(line string) []string {
	var out []string
	in := false
	start := 0
	for i := 0; i < len(line); i++ {
		switch line[i] {
		case '"':
			in = !in
		case ',':
			if !in {
				out = append(out, strings.TrimSpace(line[start:i]))
				start = i + 1
			}
		}
	}
	if t := strings.TrimSpace(line[start:]); t != "" {
		out = append(out, t)
	}
	return out
}
