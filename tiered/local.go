package tiered

import (
	"time"

	"github.com/tiercache/tiercache/internal/l1"
)

// item is what the facade keeps in L1 for a key: the decoded value, never
// bytes, so that a hit decodes nothing, and its freshness.
type item[V any] struct {
	// checkAt and negative come first: with v they are all that a hit
	// reads, and kept together they share a cache line for small values.
	//
	// checkAt is when a hit must look at the clock (Unix ns; 0: never, the
	// L1 TTL is enough); fresh is when the value stops being fresh, hard
	// when it may no longer be served even stale. delta is how long the
	// load that produced it took, for early refresh.
	checkAt  int64
	negative bool
	v        V
	fresh    int64
	hard     int64
	delta    int64
	// filled is when the read or load that produced the value started
	// (Unix ns): a copy can be no staler than its age.
	filled int64
	// tags holds the generations of the tags the value was filled with
	// (nil: none known), which it is not served past; see fence.
	tags *[]tagTicket
}

// entry is an L1 entry of the facade.
type entry[V any] = l1.Entry[item[V]]

// localTier is the facade's seam to its L1: package internal/l1 in
// production, a plain map in the facade's own tests. Set waits until the
// entry is readable (a write's read-your-write); Fill, on the read path,
// does not. Get counts the read for admission, Lookup does not.
type localTier[V any] interface {
	Get(key string) (*entry[V], bool)
	Lookup(key string) (*entry[V], bool)
	Set(key string, e *entry[V], ttl time.Duration) bool
	Fill(key string, e *entry[V], ttl time.Duration)
	Delete(key string)
	Clear()
	Wait()
	Stats() l1.Stats
	Close()
}
