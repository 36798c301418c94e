package policy

// FIFO evicts the entry that was stored first, ignoring hits. It is the
// baseline that shows what recency (LRU) adds.
type FIFO struct {
	in   map[uint64]struct{} // stored keys
	ring []uint64            // stored keys in order; ring[next] is the oldest once full
	next int
	cap  int
}

// NewFIFO returns an empty FIFO policy of the given capacity.
func NewFIFO(capacity int) Policy {
	return &FIFO{
		in:   make(map[uint64]struct{}, capacity),
		ring: make([]uint64, 0, capacity),
		cap:  capacity,
	}
}

// Access implements [Policy].
func (f *FIFO) Access(key uint64) bool {
	if _, ok := f.in[key]; ok {
		return true
	}
	if len(f.ring) < f.cap {
		f.in[key] = struct{}{}
		f.ring = append(f.ring, key)
		return false
	}
	delete(f.in, f.ring[f.next])
	f.ring[f.next] = key
	f.in[key] = struct{}{}
	f.next = (f.next + 1) % f.cap
	return false
}

// Close implements [Policy].
func (f *FIFO) Close() {}
