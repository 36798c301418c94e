package tiered

import (
	"hash/maphash"
	"sync/atomic"
)

// fence keeps a fill from installing a value that an invalidation has
// already replaced. A fill takes a ticket before it reads L2 or loads;
// every invalidation of a key bumps the key's stripe, and a flush bumps the
// global generation; a fill whose ticket no longer matches does not install.
//
// Tags are fenced the same way, in stripes of their own: an entry filled
// with tags keeps its tags' generations from its ticket, and is not served
// once an invalidation of any of them has bumped one. This is how a tag
// invalidation reaches the copies this process knows to carry the tag,
// whether or not the tag ever reached Redis's tag set.
//
// Stripes rather than one counter per key: memory stays fixed, and a
// collision only makes a fill skip L1 once, never install a stale value.
type fence struct {
	seed    maphash.Seed
	global  atomic.Uint64
	stripes [fenceStripes]atomic.Uint64
	tags    [fenceStripes]atomic.Uint64
}

const fenceStripes = 4096

type ticket struct {
	stripe      uint32
	gen, global uint64
	tags        []tagTicket
}

// tagTicket is one tag's stripe and its generation when a ticket was taken.
type tagTicket struct {
	stripe uint32
	gen    uint64
}

// fencer is what a Cache asks of its fence: a test seam, which a test fills
// with a fence that lets every fill in, to show the races the fence closes.
type fencer interface {
	ticket(key string, tags []string) ticket
	valid(t ticket) bool
	tagsValid(tt []tagTicket) bool
	invalidate(key string)
	invalidateTag(tag string)
	invalidateAll()
}

func newFence() *fence { return &fence{seed: maphash.MakeSeed()} }

func (f *fence) stripe(key string) uint32 {
	return uint32(maphash.String(f.seed, key) % fenceStripes)
}

// ticket is taken before the read whose result will be installed, with the
// tags the result is to carry.
func (f *fence) ticket(key string, tags []string) ticket {
	s := f.stripe(key)
	// The global generation is read first: a flush bumps it and then
	// clears, so a ticket that sees the old global value was taken before
	// the clear, and its install is checked again after the store.
	g := f.global.Load()
	t := ticket{stripe: s, gen: f.stripes[s].Load(), global: g}
	if len(tags) > 0 {
		t.tags = make([]tagTicket, len(tags))
		for i, tag := range tags {
			ts := f.stripe(tag)
			t.tags[i] = tagTicket{stripe: ts, gen: f.tags[ts].Load()}
		}
	}
	return t
}

func (f *fence) valid(t ticket) bool {
	return f.global.Load() == t.global && f.stripes[t.stripe].Load() == t.gen && f.tagsValid(t.tags)
}

// tagsValid reports whether no tag of tt was invalidated since tt was taken.
func (f *fence) tagsValid(tt []tagTicket) bool {
	for _, t := range tt {
		if f.tags[t.stripe].Load() != t.gen {
			return false
		}
	}
	return true
}

// invalidate is called after the key's L2 entry changed and before its L1
// copy is removed.
func (f *fence) invalidate(key string) { f.stripes[f.stripe(key)].Add(1) }

// invalidateTag ends every L1 copy that carries tag, and keeps fills in
// flight that are to carry it out of L1.
func (f *fence) invalidateTag(tag string) { f.tags[f.stripe(tag)].Add(1) }

// invalidateAll is called before L1 is cleared.
func (f *fence) invalidateAll() { f.global.Add(1) }
