// Package warmup fills a tiered.Cache at start-up from a list of keys,
// without flooding the database: first from L2, in pipelined batches (so a
// new replica copies what the cluster already has), then from the loader,
// for the keys L2 lacks, with a cap on loads in flight and an optional rate
// limit. Every fill goes through the cache's fences, so an invalidation
// during warm-up wins over the value being warmed.
//
// [Run] reports progress through a callback and log lines, and returns a
// report; a [Tracker] holds a readiness endpoint at 503 until warm-up is
// done.
package warmup
