package httpcache

import (
	"net/http"
	"strings"
	"time"
)

// Policy holds what a shared cache decides beyond RFC 9111: its security
// rules, and a freshness for responses that give none.
type Policy struct {
	// DefaultTTL is the freshness of a response that gives none
	// (no max-age, s-maxage or Expires). Default: 0, such a response is
	// not stored: RFC 9111 allows a heuristic, but a cache that guesses
	// serves what the application never said it could.
	DefaultTTL time.Duration

	// AllowSetCookie stores responses that set cookies. Default: false, a
	// shared cache must not hand one user's cookie to another.
	AllowSetCookie bool

	// AllowCookie serves and stores requests that carry cookies. Default:
	// false, they bypass the cache: a response to a request with cookies
	// is often personal, whatever its headers say.
	AllowCookie bool

	// MaxVariants caps the variants (Vary) stored for one URL.
	// Default: 16.
	MaxVariants int
}

// Reasons a response is not stored, for logs and metrics.
const (
	ReasonMethod        = "method"        // not GET or HEAD
	ReasonStatus        = "status"        // a status a shared cache does not store (error responses without explicit freshness, 206, 1xx)
	ReasonNoStore       = "no-store"      // request or response no-store
	ReasonPrivate       = "private"       // response private
	ReasonAuthorization = "authorization" // request with Authorization, and the response does not allow it (§3.5)
	ReasonCookie        = "cookie"        // request with Cookie (Policy.AllowCookie)
	ReasonSetCookie     = "set-cookie"    // response with Set-Cookie (Policy.AllowSetCookie)
	ReasonVaryStar      = "vary-star"     // Vary: *
	ReasonNoFreshness   = "no-freshness"  // no explicit freshness, no validator, no Policy.DefaultTTL
	ReasonRequestBody   = "request-body"  // a GET with a body
)

// Cacheable reports whether req may be answered from the cache at all;
// reason says why not. It looks at the request only.
func (p Policy) Cacheable(req *http.Request) (ok bool, reason string) {
	switch {
	case req.Method != http.MethodGet && req.Method != http.MethodHead:
		return false, ReasonMethod
	case req.Body != nil && req.Body != http.NoBody && (req.ContentLength != 0 || len(req.TransferEncoding) > 0):
		return false, ReasonRequestBody
	case get(req.Header, "Cookie") != "" && !p.AllowCookie:
		return false, ReasonCookie
	}
	return true, ""
}

// Storable reports whether a shared cache may store the response (status
// and header h) to req, following RFC 9111 §3 and the Policy; reason says
// why not. It does not look at Vary beyond "*": the caller counts variants.
// Only responses to GET are stored: a HEAD may be answered from a stored
// GET response, but a HEAD response has no body to answer a GET with.
func (p Policy) Storable(req *http.Request, status int, h http.Header) (ok bool, reason string) {
	if ok, reason := p.Cacheable(req); !ok {
		return false, reason
	}
	if req.Method != http.MethodGet {
		return false, ReasonMethod
	}
	reqCC := ParseCacheControl(req.Header["Cache-Control"])
	cc := ParseCacheControl(h["Cache-Control"])
	switch {
	case reqCC.NoStore || cc.NoStore:
		return false, ReasonNoStore
	case cc.Private:
		return false, ReasonPrivate
	case get(req.Header, "Authorization") != "" && !(cc.MustRevalidate || cc.Public || cc.SMaxAge.Present):
		return false, ReasonAuthorization
	case get(h, "Set-Cookie") != "" && !p.AllowSetCookie:
		return false, ReasonSetCookie
	}
	if _, star := ParseVary(h["Vary"]); star {
		return false, ReasonVaryStar
	}
	explicit := cc.SMaxAge.Present || cc.MaxAge.Present || get(h, "Expires") != ""
	switch {
	case status < 200 || status == http.StatusPartialContent || status == http.StatusNotModified:
		// 1xx are not final; 206 needs range handling this cache lacks; 304 only updates a stored response.
		return false, ReasonStatus
	case defaultCacheable(status):
		// Storable with explicit freshness, a configured one, public, or
		// with a validator, as a response to revalidate on each use.
		if !explicit && p.DefaultTTL <= 0 && !cc.Public && !hasValidator(h) {
			return false, ReasonNoFreshness
		}
	case !explicit:
		// Other statuses (most errors among them) only with explicit
		// freshness: a cache that stored a 500 or a 400 for its default TTL
		// would let one bad request deny a URL to everyone.
		return false, ReasonStatus
	case status >= 500:
		return false, ReasonStatus
	}
	return true, ""
}

// defaultCacheable lists the status codes that are heuristically cacheable
// (RFC 9110 §15.1).
func defaultCacheable(status int) bool {
	switch status {
	case 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501:
		return true
	}
	return false
}

func hasValidator(h http.Header) bool {
	return get(h, "Etag") != "" || get(h, "Last-Modified") != ""
}

// Lifetime returns the freshness lifetime of a response (RFC 9111 §4.2.1)
// for a shared cache: s-maxage, else max-age, else Expires minus Date (the
// time received standing in for a missing Date, RFC 9110 §6.6.1), else
// Policy.DefaultTTL. An Expires that does not parse means already expired.
// A no-cache response has a lifetime of 0: it is stored, and revalidated
// on every use.
func (p Policy) Lifetime(h http.Header, received time.Time) time.Duration {
	cc := ParseCacheControl(h["Cache-Control"])
	switch {
	case cc.NoCache:
		return 0
	case cc.SMaxAge.Present:
		return cc.SMaxAge.Value
	case cc.MaxAge.Present:
		return cc.MaxAge.Value
	case get(h, "Expires") != "":
		exp, err := http.ParseTime(get(h, "Expires"))
		if err != nil {
			return 0
		}
		date := received
		if d := get(h, "Date"); d != "" {
			if date, err = http.ParseTime(d); err != nil {
				return 0
			}
		}
		return max(exp.Sub(date), 0)
	}
	return p.DefaultTTL
}

// Age returns the current age of a stored response (RFC 9111 §4.2.3): h
// is its header as received, requested and received when the request went
// out and the response came back, and now is the time of the question.
func Age(h http.Header, requested, received, now time.Time) time.Duration {
	var ageValue time.Duration
	if v, ok := parseDelta(firstValue(get(h, "Age"))); ok {
		ageValue = v // delta-seconds, 2^31 s when too large (§1.2.2)
	}
	apparent := time.Duration(0)
	if d := get(h, "Date"); d == "" {
		// No Date: the apparent age is 0 (and ParseTime would allocate an error).
	} else if date, err := http.ParseTime(d); err == nil {
		apparent = min(max(received.Sub(date), 0), maxDelta) // §1.2.2: 2^31 s, not an overflow
	}
	correctedAge := ageValue + max(received.Sub(requested), 0)
	initial := max(apparent, correctedAge)
	return initial + max(now.Sub(received), 0)
}

// Use is what a cache may do with a stored response for a request.
type Use int

const (
	// Serve: the response is fresh enough for the request.
	Serve Use = iota
	// ServeStale: the response is stale, but within what the request
	// (max-stale) or the response (stale-while-revalidate) allows; the
	// caller revalidates in the background when the response allowed it.
	ServeStale
	// Revalidate: the response may be used only after the origin confirms
	// it (a conditional request).
	Revalidate
)

// Usable decides what a cache may do with a stored response for req
// (RFC 9111 §4.2, §5.2.1, RFC 5861), given the stored response's header,
// its current age and freshness lifetime.
func Usable(req *http.Request, h http.Header, age, lifetime time.Duration) Use {
	reqCC := ParseCacheControl(req.Header["Cache-Control"])
	cc := ParseCacheControl(h["Cache-Control"])
	// A field-qualified no-cache (no-cache="Set-Cookie") only forbids
	// sending those fields unrevalidated; the caller strips them when it
	// stores the response (see StoredHeader), and the rest is reusable.
	if reqCC.NoCache || cc.NoCache || pragmaNoCache(req) && get(req.Header, "Cache-Control") == "" {
		return Revalidate
	}
	if reqCC.MaxAge.Present && age > reqCC.MaxAge.Value {
		return Revalidate
	}
	fresh := lifetime - age
	if reqCC.MinFresh.Present && fresh < reqCC.MinFresh.Value {
		return Revalidate
	}
	if fresh > 0 {
		return Serve
	}
	// Stale. must-revalidate and proxy-revalidate (and s-maxage, for a
	// shared cache) forbid serving it without the origin.
	if cc.MustRevalidate || cc.ProxyRevalidate || cc.SMaxAge.Present {
		return Revalidate
	}
	if reqCC.MaxStale.Present && -fresh <= reqCC.MaxStale.Value {
		return ServeStale
	}
	// A request max-age without max-stale says the client does not want a
	// stale response (§5.2.1.1), whatever the response allows.
	if cc.StaleWhileRevalidate.Present && -fresh <= cc.StaleWhileRevalidate.Value && !reqCC.MaxAge.Present {
		return ServeStale
	}
	return Revalidate
}

// StaleIfError reports whether a stored response past its lifetime by
// staleness may answer when revalidating it failed (RFC 5861 §4: the
// response's or the request's stale-if-error).
func StaleIfError(req *http.Request, h http.Header, staleness time.Duration) bool {
	cc := ParseCacheControl(h["Cache-Control"])
	if cc.NoCache || cc.MustRevalidate || cc.ProxyRevalidate || cc.SMaxAge.Present {
		return false
	}
	reqCC := ParseCacheControl(req.Header["Cache-Control"])
	return cc.StaleIfError.Present && staleness <= cc.StaleIfError.Value ||
		reqCC.StaleIfError.Present && staleness <= reqCC.StaleIfError.Value
}

// StoredHeader returns the header a shared cache keeps of a response: h
// without the fields that private="..." forbids it to store (RFC 9111
// §5.2.2.7) and that no-cache="..." forbids it to send without
// revalidation (§5.2.2.4), which it then never sends.
func StoredHeader(h http.Header) http.Header {
	out := h.Clone()
	cc := ParseCacheControl(h["Cache-Control"])
	for _, f := range cc.PrivateFields {
		out.Del(f)
	}
	for _, f := range cc.NoCacheFields {
		out.Del(f)
	}
	return out
}

// pragmaNoCache reports a request's "Pragma: no-cache" (RFC 9111 §5.4),
// which stands for Cache-Control: no-cache when the request has none.
func pragmaNoCache(req *http.Request) bool {
	for _, line := range req.Header["Pragma"] {
		for _, p := range strings.Split(line, ",") {
			if strings.EqualFold(strings.TrimSpace(p), "no-cache") {
				return true
			}
		}
	}
	return false
}
