package tiered

import (
	"time"

	"github.com/tiercache/tiercache/internal/fence"
	"github.com/tiercache/tiercache/internal/l1"
)

// item is what L1 keeps for a key: the decoded value, so that a hit decodes
// nothing, and its freshness (Unix ns).
type item[V any] struct {
	// checkAt, negative and v, all a hit reads, share a cache line. checkAt
	// is when a hit must look at the clock (0: never); fresh and hard end
	// serving fresh and stale; delta is the load's duration, for XFetch.
	checkAt  int64
	negative bool
	v        V
	fresh    int64
	hard     int64
	delta    int64
	filled   int64              // when its read or load started: a copy is no staler than its age
	tags     *[]fence.TagTicket // its tags' generations at the fill (nil: none), not served past
}

type entry[V any] = l1.Entry[item[V]]

// localTier is the seam to L1 (internal/l1; a map in tests). Set waits
// until the entry is readable, for a write's read-your-write; Fill does not.
// Get counts the read for admission; Lookup does not.
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
