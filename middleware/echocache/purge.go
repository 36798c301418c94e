package echocache

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/tiercache/tiercache/middleware/httpcache"
	"github.com/tiercache/tiercache/tiered"
)

// Purging: by surrogate key (tag), by URL, hard or soft.

// PurgeTags removes every response tagged (Surrogate-Key) with one of
// tags, in every replica.
func (m *Middleware) PurgeTags(ctx context.Context, tags ...string) error {
	prefixed := make([]string, len(tags))
	for i, t := range tags {
		prefixed[i] = "sk:" + t
	}
	return m.cfg.Cache.InvalidateTags(ctx, prefixed...)
}

// SoftPurgeTags marks every response tagged with one of tags stale, in
// every replica, instead of removing it: the next request revalidates it
// with the handler (a 304 keeps the body), and where the response allows
// stale-while-revalidate or stale-if-error, readers are not kept waiting
// and a failing handler is covered. It needs a tiered cache with Redis
// (the tag's members are read from L2); without, it purges hard.
func (m *Middleware) SoftPurgeTags(ctx context.Context, tags ...string) error {
	prefixed := make([]string, len(tags))
	for i, t := range tags {
		prefixed[i] = "sk:" + t
	}
	return m.softPurge(ctx, prefixed)
}

// SoftPurgeURL is SoftPurgeTags for every variant of one URL (see
// PurgeURL).
func (m *Middleware) SoftPurgeURL(ctx context.Context, rawURL string) error {
	key, err := m.purgeKey(ctx, rawURL)
	if err != nil {
		return err
	}
	return m.softPurge(ctx, []string{urlTag(key)})
}

func (m *Middleware) softPurge(ctx context.Context, tags []string) error {
	for _, tag := range tags {
		keys, err := m.cfg.Cache.TaggedKeys(ctx, tag)
		if errors.Is(err, errors.ErrUnsupported) {
			return m.cfg.Cache.InvalidateTags(ctx, tags...)
		}
		if err != nil {
			return fmt.Errorf("echocache: soft purge: %w", err)
		}
		for _, k := range keys {
			stored, err := m.cfg.Cache.Get(ctx, k)
			if err != nil || stored.Index || stored.Stale {
				continue // gone, an index, or stale already
			}
			stored.Stale = true
			// Set evicts the old copy from every replica's L1.
			opts := []tiered.Option{tiered.WithTTL(m.keep(stored.Header, stored.Received)), tiered.WithTags(stored.Tags...)}
			if err := m.cfg.Cache.Set(ctx, k, stored, opts...); err != nil {
				return fmt.Errorf("echocache: soft purge: %w", err)
			}
		}
	}
	return nil
}

// PurgeURL removes the cached responses, all variants, of the GET for
// rawURL ("https://example.com/products/42?x=1"), in every replica.
func (m *Middleware) PurgeURL(ctx context.Context, rawURL string) error {
	key, err := m.purgeKey(ctx, rawURL)
	if err != nil {
		return err
	}
	return m.cfg.Cache.InvalidateTags(ctx, urlTag(key))
}

// purgeKey is the key of a GET for rawURL.
func (m *Middleware) purgeKey(ctx context.Context, rawURL string) (string, error) {
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return "", fmt.Errorf("echocache: purge %q: %w", rawURL, err)
	}
	if r.URL.Scheme == "https" {
		r.TLS = &tlsState
	}
	key, err := httpcache.Key(r, httpcache.KeyConfig{MaxKeyBytes: m.cfg.Key.MaxKeyBytes})
	if err != nil {
		return "", fmt.Errorf("echocache: purge %q: %w", rawURL, err)
	}
	return key, nil
}

// tlsState marks a purge request for an https URL as TLS, as the server
// marks real ones, so that it gets the same key.
var tlsState tls.ConnectionState

// takeSurrogateKeys removes the Surrogate-Key field from h, which is for
// the cache and not for clients, and returns its tags: space-separated, at
// most maxTags of at most maxTagBytes each (the rest are dropped).
func takeSurrogateKeys(h http.Header) []string {
	lines := h.Values("Surrogate-Key")
	h.Del("Surrogate-Key")
	var tags []string
	for _, l := range lines {
		for _, t := range strings.Fields(l) {
			if len(t) <= maxTagBytes && len(tags) < maxTags {
				tags = append(tags, t)
			}
		}
	}
	return tags
}

const (
	maxTags     = 32
	maxTagBytes = 256
)

// urlTag tags every entry of one URL, so that all its variants go at once.
func urlTag(key string) string { return "url:" + key }

// PurgeHandler returns a handler that purges over HTTP, for the
// application to mount where it chooses: never on its public routes, and
// it is not mounted by default. authorize decides who may purge (check a
// token, an internal network); a nil authorize refuses everyone.
//
// The request is a POST with one or more "tag" (Surrogate-Key) and "url"
// values, in the query or a form body, and "soft=1" for a soft purge. It
// answers 204 once everything is purged, 400 with nothing to purge, 403
// when not authorized.
func (m *Middleware) PurgeHandler(authorize func(c echo.Context) bool) echo.HandlerFunc {
	return func(c echo.Context) error {
		if authorize == nil || !authorize(c) {
			return echo.NewHTTPError(http.StatusForbidden, "purge not authorized")
		}
		if c.Request().Method != http.MethodPost {
			return echo.NewHTTPError(http.StatusMethodNotAllowed, "purge with POST")
		}
		form, err := c.FormParams()
		if err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "bad purge request").SetInternal(err)
		}
		tags, urls := form["tag"], form["url"]
		if len(tags) == 0 && len(urls) == 0 {
			return echo.NewHTTPError(http.StatusBadRequest, `nothing to purge: give "tag" or "url" values`)
		}
		ctx := c.Request().Context()
		purgeTags, purgeURL := m.PurgeTags, m.PurgeURL
		if form.Get("soft") == "1" {
			purgeTags, purgeURL = m.SoftPurgeTags, m.SoftPurgeURL
		}
		if len(tags) > 0 {
			if err := purgeTags(ctx, tags...); err != nil {
				return fmt.Errorf("echocache: purge: %w", err)
			}
		}
		for _, u := range urls {
			if err := purgeURL(ctx, u); err != nil {
				return echo.NewHTTPError(http.StatusBadRequest, "bad purge url").SetInternal(err)
			}
		}
		return c.NoContent(http.StatusNoContent)
	}
}

// invalidateAfter removes the cached responses of the URL an unsafe
// request targeted, and of its same-origin Location and Content-Location
// (RFC 9111 §4.4), in every replica.
func (m *Middleware) invalidateAfter(c echo.Context) {
	req := c.Request()
	scheme, host := httpcache.Origin(req, m.cfg.Key)
	keyOf := func(u *url.URL) (string, bool) {
		r := req.Clone(req.Context())
		r.Method, r.URL, r.Body, r.ContentLength, r.TransferEncoding = http.MethodGet, u, http.NoBody, 0, nil
		if u.Host != "" {
			// An absolute URL names its own origin; the key must not take
			// it from this request's forwarded headers.
			r.Host, r.TLS = u.Host, nil
			if u.Scheme == "https" {
				r.TLS = &tlsState
			}
			r.Header.Del("X-Forwarded-Host")
			r.Header.Del("X-Forwarded-Proto")
		}
		key, err := httpcache.Key(r, m.cfg.Key)
		return key, err == nil
	}
	var tags []string
	if key, ok := keyOf(req.URL); ok {
		tags = append(tags, urlTag(key))
	}
	for _, f := range []string{"Location", "Content-Location"} {
		v := c.Response().Header().Get(f)
		if v == "" {
			continue
		}
		u, err := req.URL.Parse(v)
		if err != nil {
			continue
		}
		if u.Host != "" && (u.Host != host || u.Scheme != scheme) {
			continue // another origin: not ours to invalidate (RFC 9111 §4.4)
		}
		if u.Host == "" || req.URL.Host == "" {
			// Relative to this request: keep its origin, as the GET for it
			// would have.
			u = &url.URL{Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery}
		}
		if key, ok := keyOf(u); ok {
			tags = append(tags, urlTag(key))
		}
	}
	if err := m.cfg.Cache.InvalidateTags(context.WithoutCancel(req.Context()), tags...); err != nil {
		m.cfg.Logger.Warn("echocache: invalidation failed", "path", req.URL.Path, "err", err)
		return
	}
	m.count(outInvalidated)
}
