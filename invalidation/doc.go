// Package invalidation provides a bus over Redis pub/sub that keeps the
// in-process copies of a cache coherent across processes: when one process
// changes a key, every other process in the namespace evicts its copy.
//
// Redis pub/sub is at-most-once. A subscriber that is cut off never gets
// what was published meanwhile, and go-redis reconnects without saying so.
// The bus makes every loss visible and answers it with a flush of the
// local copies:
//
//   - every (re)subscription after the first flushes;
//   - messages carry the publisher's instance id, boot epoch and sequence
//     number, and publishers send heartbeats that repeat their last
//     sequence number, so a gap (a dropped message, or a publish that
//     failed) or a new epoch flushes;
//   - each process hears its own heartbeats come back. A heartbeat sent at
//     time h and received proves that every message published before h has
//     been applied, so [Bus.Fresh] can say, with an atomic load and a
//     clock read, whether this process has applied every invalidation
//     older than [Config].StalenessBound. A cache that serves a local
//     copy only while the bus is fresh, or while the copy is younger than
//     the bound, never serves a value older than the bound (see
//     docs/consistency.md).
//
// Publishes are coalesced: keys published while the previous message was
// on its way to Redis go out together in the next one. [Bus.Publish]
// returns once Redis has accepted the message, so a write that returns has
// had its invalidation sent.
//
// A Bus is safe for concurrent use.
package invalidation
