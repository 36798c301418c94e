// Package httpcache provides the rules of a shared HTTP cache (RFC 9111),
// apart from any web framework: parsing Cache-Control, building cache keys
// that cannot be poisoned, deciding what a shared cache may store, how long
// a stored response stays fresh, whether a stored response may answer a
// request, and how conditional requests are answered.
//
// The functions here are pure: they take requests, headers and times, and
// hold no state. The Echo adapter (package echocache) stores responses in a
// tiered.Cache and uses these rules to decide what to store and serve.
package httpcache
