// Package tiered provides a two-tier cache: an in-process L1 (W-TinyLFU:
// an adaptive admission window in front of ristretto) in front of a shared
// L2 (Redis, through a gocache store and go-redis).
//
// A read ([Cache.Get], [Cache.GetOrLoad]) tries L1, then L2, then the
// loader. L1 holds decoded values, so an L1 hit costs a map lookup and no
// allocation. Concurrent misses of one key in a process share one L2 read
// and one load; misses in several processes share one load too, through a
// lease on the key in L2 that the others wait on. A loaded value fills L2,
// then L1; an L1 copy never outlives its L2 entry, whose absolute expiry
// travels inside the stored value. [Cache.GetMany] and
// [Cache.GetOrLoadMany] read many keys with one pipelined L2 round trip
// and one loader call.
//
// Values are fresh for [Config].TTL. Past it, they can be served stale
// while one refresh runs ([Config].StaleTTL) or while refreshing fails
// ([Config].MaxStale); hot keys are refreshed shortly before they expire
// (XFetch, [Config].EarlyRefresh), so their readers never wait on a load.
//
// Writes ([Cache.Set], [Cache.Delete], [Cache.InvalidateTags]) change L2,
// then L1, and evict the key from every other process's L1 through the
// invalidation bus (package invalidation) before they return. A read or
// load that a write overtakes installs nothing: L1 fills are fenced by
// generation tickets, L2 fills by the lease. docs/consistency.md states
// what a reader may see.
//
// Besides cache-aside (Get, Set, Delete) and read-through (GetOrLoad), a
// Cache writes through ([Cache.WriteThrough]: the source first, then every
// tier) and around ([Cache.WriteAround]: the source, then invalidate), and
// [NewWriteBehind] adds a durable write-behind: a write is acknowledged
// once Redis holds it in a stream, and flushers in any process apply it to
// the source in batches, in order per key, with retries, dead letters and
// recovery from crashed processes.
//
// L2 values are versioned envelopes (format version, codec ID, flags,
// expiry, length-checked payload), so that a rolling deploy or a codec
// change never misreads a value: anything that does not decode is a miss,
// counted in [Stats].DecodeErrors.
//
// When Redis fails, reads fail open: every L2 call is bounded by
// [Config].L2Timeout, a circuit breaker skips L2 after failures that span
// two timeouts, and reads go on from L1 and the loader; failures are
// counted, logged with log/slog and exported through OpenTelemetry
// ([Config].Strict also returns them). Writes never report a success they
// did not have: they finish their Redis steps even if the caller's context
// is done, retry for up to [Config].WriteTimeout, and otherwise return an
// error for which errors.Is(err, [ErrL2Unavailable]) holds, keeping the
// invalidation in an outbox made as soon as Redis answers (until then this
// process reads nothing from L2).
//
// Every L2 operation touches one key (batches are pipelines of one-key
// commands), so the cache works unchanged on Redis Cluster.
//
// A Cache is safe for concurrent use.
package tiered
