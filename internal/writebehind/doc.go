// Package writebehind is the queue behind tiered.WriteBehind: it keeps each
// write in a Redis stream until the source has it.
//
//	q, err := writebehind.New(host, writebehind.Config[Product]{Flush: save})
//	id, err := q.Append(ctx, "p:1", payload, time.Hour, time.Hour)
//	err = q.Close(ctx)
//
// Keys are spread over Shards streams ("{<ns>#wb:<shard>}"), each with one
// consumer group. At most one process flushes a shard at a time: it holds
// the shard's lock ("{<ns>#wb:<shard>}:owner", in the stream's hash slot),
// renewed before every call to Flush, and acknowledges entries only while
// it still holds it. A consumer group alone would hand one key's writes to
// several consumers, which could apply them out of order; the lock makes a
// shard a queue with a single reader, as a Kafka partition is, and the
// group still keeps what that reader was handed and has not acked (its
// pending entries), so that the next owner claims them with XAUTOCLAIM.
//
// A flusher that meets any Redis failure after a Flush (settling L2,
// acknowledging, dead-lettering) stops and gives its shard up: the next
// owner replays what was not acknowledged, oldest first, so a key's writes
// are never applied out of order, only some of them twice.
//
// The cache's copy of a written value lives in L2 in an envelope that
// carries the write's entry ID (l2.FlagWriteID): with no expiry while it is
// pending, so that neither a TTL nor a volatile-* eviction policy drops it
// before the source has it, and with its TTL once flushed. l2.WBPut compares
// IDs, so that no older write, however late, overwrites a newer one.
package writebehind
