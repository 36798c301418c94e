// Package fence keeps a fill from installing a value that an invalidation
// has already replaced. A fill takes a ticket before it reads L2 or loads;
// every invalidation of a key bumps the key's stripe, and a flush bumps the
// global generation; a fill whose ticket no longer matches does not
// install.
//
//	f := fence.New()
//	t := f.Ticket(key, tags) // before the read
//	v := read(key)
//	if f.Valid(t) {
//		install(key, v) // and check Valid again after the store
//	}
package fence

import (
	"hash/maphash"
	"sync/atomic"
)

// Fence holds the generations; it is safe for concurrent use. Tags are
// fenced the same way, in stripes of their own: an entry filled with tags
// keeps its tags' generations from its ticket, and is not served once an
// invalidation of any of them has bumped one. This is how a tag
// invalidation reaches the copies this process knows to carry the tag,
// whether or not the tag ever reached Redis's tag set.
//
// Stripes rather than one counter per key: memory stays fixed, and a
// collision only makes a fill skip L1 once, never install a stale value.
type Fence struct {
	seed    maphash.Seed
	global  atomic.Uint64
	stripes [nStripes]atomic.Uint64
	tags    [nStripes]atomic.Uint64
}

const nStripes = 4096

// Ticket is the generations that a fill saw before its read.
type Ticket struct {
	stripe      uint32
	gen, global uint64
	Tags        []TagTicket // the tags' generations, which the filled entry keeps
}

// TagTicket is one tag's stripe and its generation when a ticket was taken.
type TagTicket struct {
	stripe uint32
	gen    uint64
}

// New returns a Fence with no invalidations yet.
func New() *Fence { return &Fence{seed: maphash.MakeSeed()} }

func (f *Fence) stripe(key string) uint32 {
	return uint32(maphash.String(f.seed, key) % nStripes)
}

// Ticket is taken before the read whose result will be installed, with the
// tags the result is to carry.
func (f *Fence) Ticket(key string, tags []string) Ticket {
	s := f.stripe(key)
	// The global generation is read first: a flush bumps it and then
	// clears, so a ticket that sees the old global value was taken before
	// the clear, and its install is checked again after the store.
	g := f.global.Load()
	t := Ticket{stripe: s, gen: f.stripes[s].Load(), global: g}
	if len(tags) > 0 {
		t.Tags = make([]TagTicket, len(tags))
		for i, tag := range tags {
			ts := f.stripe(tag)
			t.Tags[i] = TagTicket{stripe: ts, gen: f.tags[ts].Load()}
		}
	}
	return t
}

// Valid reports whether nothing that t covers was invalidated since t was
// taken.
func (f *Fence) Valid(t Ticket) bool {
	return f.global.Load() == t.global && f.stripes[t.stripe].Load() == t.gen && f.TagsValid(t.Tags)
}

// TagsValid reports whether no tag of tt was invalidated since tt was taken.
func (f *Fence) TagsValid(tt []TagTicket) bool {
	for _, t := range tt {
		if f.tags[t.stripe].Load() != t.gen {
			return false
		}
	}
	return true
}

// Invalidate is called after the key's L2 entry changed and before its L1
// copy is removed.
func (f *Fence) Invalidate(key string) { f.stripes[f.stripe(key)].Add(1) }

// InvalidateTag ends every L1 copy that carries tag, and keeps fills in
// flight that are to carry it out of L1.
func (f *Fence) InvalidateTag(tag string) { f.tags[f.stripe(tag)].Add(1) }

// InvalidateAll is called before L1 is cleared.
func (f *Fence) InvalidateAll() { f.global.Add(1) }
