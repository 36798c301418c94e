// Package echocache provides Echo middleware that caches HTTP responses in
// a tiered.Cache, with the rules of a shared cache (RFC 9111, through
// package httpcache): it stores only what a shared cache may store, serves
// it while fresh with an Age and a Cache-Status header, answers
// conditional requests with 304, and lets unsafe requests (POST, PUT,
// PATCH, DELETE) invalidate the URL they target in every replica, through
// the tiered cache's invalidation bus.
//
// Handlers can tag their responses with a Surrogate-Key header (stripped
// before the client sees it) and purge them by tag, or purge a URL, with
// [Middleware.PurgeTags] and [Middleware.PurgeURL].
package echocache
