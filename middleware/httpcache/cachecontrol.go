package httpcache

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Delta is a delta-seconds argument of a Cache-Control directive. Present
// is false when the directive is absent.
type Delta struct {
	Present bool
	Value   time.Duration
}

// maxDelta is what RFC 9111 §1.2.2 says a value too large to represent
// counts as: 2^31 seconds.
const maxDelta = time.Duration(math.MaxInt32+1) * time.Second

// Directives is a parsed Cache-Control header: the directives of RFC 9111
// §5.2 and RFC 5861 that a shared cache acts on. Unknown directives are
// ignored, as §5.2.3 requires.
type Directives struct {
	// Response and request directives.
	NoStore, NoCache bool
	MaxAge           Delta

	// Response directives.
	Public, Private                 bool
	MustRevalidate, ProxyRevalidate bool
	NoTransform, Immutable          bool
	SMaxAge                         Delta
	// NoCacheFields and PrivateFields are the field-qualified forms
	// (no-cache="Set-Cookie"): those fields, canonicalized, must not be
	// sent from the cache without revalidation (no-cache) or stored by a
	// shared cache (private). With a field list, NoCache and Private stay
	// false.
	NoCacheFields, PrivateFields []string
	StaleWhileRevalidate         Delta
	StaleIfError                 Delta

	// Request directives.
	MaxStale     Delta // MaxStale.Value is maxDelta for max-stale without a value
	MinFresh     Delta
	OnlyIfCached bool
}

// ParseCacheControl parses the Cache-Control field lines in values (as in
// http.Header.Values). It never fails: what it cannot parse it treats as
// RFC 9111 §4.2.1 encourages, by taking the response for stale: a max-age
// or s-maxage that is malformed, or given twice with different values,
// counts as 0.
func ParseCacheControl(values []string) Directives {
	var d Directives
	for _, line := range values {
		for len(line) > 0 {
			var name, arg string
			var quoted bool
			name, arg, quoted, line = nextDirective(line)
			if name == "" {
				continue
			}
			d.set(strings.ToLower(name), arg, quoted)
		}
	}
	return d
}

func (d *Directives) set(name, arg string, quoted bool) {
	switch name {
	case "no-store":
		d.NoStore = true
	case "no-cache":
		if arg == "" {
			d.NoCache = true
		} else {
			d.NoCacheFields = append(d.NoCacheFields, fieldList(arg)...)
		}
	case "private":
		if arg == "" {
			d.Private = true
		} else {
			d.PrivateFields = append(d.PrivateFields, fieldList(arg)...)
		}
	case "public":
		d.Public = true
	case "must-revalidate":
		d.MustRevalidate = true
	case "proxy-revalidate":
		d.ProxyRevalidate = true
	case "no-transform":
		d.NoTransform = true
	case "immutable":
		d.Immutable = true
	case "only-if-cached":
		d.OnlyIfCached = true
	case "max-age":
		setDelta(&d.MaxAge, arg, true)
	case "s-maxage":
		setDelta(&d.SMaxAge, arg, true)
	case "max-stale":
		if arg == "" && !quoted {
			// Any staleness; with other max-stale values, the smallest wins.
			if !d.MaxStale.Present {
				d.MaxStale = Delta{Present: true, Value: maxDelta}
			}
			return
		}
		setDelta(&d.MaxStale, arg, false)
	case "min-fresh":
		setDelta(&d.MinFresh, arg, false)
	case "stale-while-revalidate":
		setDelta(&d.StaleWhileRevalidate, arg, false)
	case "stale-if-error":
		setDelta(&d.StaleIfError, arg, false)
	}
}

// setDelta records a delta-seconds argument (quoted or not: §5.2 asks
// senders for the token form, and recipients to accept both). A malformed or conflicting
// freshness value (fresh is true for max-age and s-maxage) counts as 0, so
// that the response is stale; other malformed directives are ignored,
// since treating them as 0 would widen what a client accepts (max-stale)
// or narrow it in ways the client did not ask for.
func setDelta(dst *Delta, arg string, fresh bool) {
	v, ok := parseDelta(arg)
	switch {
	case !ok && fresh:
		*dst = Delta{Present: true}
	case !ok:
		return
	case dst.Present && dst.Value != v && fresh:
		*dst = Delta{Present: true}
	case dst.Present:
		dst.Value = min(dst.Value, v)
	default:
		*dst = Delta{Present: true, Value: v}
	}
}

// parseDelta parses delta-seconds (RFC 9111 §1.2.2): one or more digits.
func parseDelta(s string) (time.Duration, bool) {
	if s == "" {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > math.MaxInt32 {
		return maxDelta, true // too large to represent: 2^31
	}
	return time.Duration(n) * time.Second, true
}

// nextDirective splits the first directive off a Cache-Control line:
// token [ "=" ( token / quoted-string ) ], up to the next comma that is not
// inside a quoted string.
func nextDirective(s string) (name, arg string, quoted bool, rest string) {
	s = strings.TrimLeft(s, " \t,")
	i := strings.IndexAny(s, "=,")
	if i < 0 {
		return strings.TrimSpace(s), "", false, ""
	}
	name = strings.TrimSpace(s[:i])
	if s[i] == ',' {
		return name, "", false, s[i+1:]
	}
	s = strings.TrimLeft(s[i+1:], " \t")
	if strings.HasPrefix(s, `"`) {
		var b strings.Builder
		for j := 1; j < len(s); j++ {
			switch c := s[j]; {
			case c == '\\' && j+1 < len(s):
				j++
				b.WriteByte(s[j])
			case c == '"':
				rest = s[j+1:]
				if k := strings.IndexByte(rest, ','); k >= 0 {
					rest = rest[k+1:]
				} else {
					rest = ""
				}
				return name, b.String(), true, rest
			default:
				b.WriteByte(c)
			}
		}
		return name, b.String(), true, "" // unterminated: take what there is
	}
	if k := strings.IndexByte(s, ','); k >= 0 {
		return name, strings.TrimSpace(s[:k]), false, s[k+1:]
	}
	return name, strings.TrimSpace(s), false, ""
}

// fieldList splits a field-qualified directive's argument into canonical
// field names.
func fieldList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, http.CanonicalHeaderKey(f))
		}
	}
	return out
}
