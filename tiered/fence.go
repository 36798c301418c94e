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
// Stripes rather than one counter per key: memory stays fixed, and a
// collision only makes a fill skip L1 once, never install a stale value.
type fence struct {
	seed    maphash.Seed
	global  atomic.Uint64
	stripes [fenceStripes]atomic.Uint64
}

const fenceStripes = 4096

type ticket struct {
	stripe      uint32
	gen, global uint64
}

func newFence() *fence { return &fence{seed: maphash.MakeSeed()} }

func (f *fence) stripe(key string) uint32 {
	return uint32(maphash.String(f.seed, key) % fenceStripes)
}

// ticket is taken before the read whose result will be installed.
func (f *fence) ticket(key string) ticket {
	s := f.stripe(key)
	// The global generation is read first: a flush bumps it and then
	// clears, so a ticket that sees the old global value was taken before
	// the clear, and its install is checked again after the store.
	g := f.global.Load()
	return ticket{stripe: s, gen: f.stripes[s].Load(), global: g}
}

func (f *fence) valid(t ticket) bool {
	return f.global.Load() == t.global && f.stripes[t.stripe].Load() == t.gen
}

// invalidate is called after the key's L2 entry changed and before its L1
// copy is removed.
func (f *fence) invalidate(key string) { f.stripes[f.stripe(key)].Add(1) }

// invalidateAll is called before L1 is cleared.
func (f *fence) invalidateAll() { f.global.Add(1) }
