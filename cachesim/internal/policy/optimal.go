package policy

import "math"

// never is the next use of a key that is not accessed again.
const never = math.MaxInt32

// Optimal is Bélády's MIN: on a miss with a full cache it evicts the stored
// key whose next use lies farthest in the future. It is the upper bound for
// any policy that must store every missed key (demand paging), which is how
// the harness drives all policies.
//
// Prepare numbers the distinct keys densely and computes, for each access,
// the index of the next access to the same key. The stored keys sit in a
// max-heap ordered by that index; a hit moves its key's index forward, so
// the key can only rise in the heap. Access then needs no map.
type Optimal struct {
	cap  int
	keys []uint64
	id   []int32 // id[i] is the dense number of keys[i]
	next []int32 // next[i] is the next access to keys[i] after i, or never
	pos  int     // index of the next Access in keys

	heap []optimalEntry // max-heap on next use
	at   []int32        // id -> index in heap, or -1 if not stored
}

type optimalEntry struct {
	next int32
	id   int32
}

// NewOptimal returns an empty Optimal policy; it must be prepared with the
// trace before use (see [Clairvoyant]).
func NewOptimal(capacity int) Policy {
	return &Optimal{cap: capacity}
}

// Prepare implements [Clairvoyant]. Traces are limited to 2^31-2 accesses.
func (o *Optimal) Prepare(keys []uint64) {
	if len(keys) >= never {
		panic("policy: trace too long for Optimal")
	}
	o.keys, o.pos = keys, 0
	o.id = make([]int32, len(keys))
	ids := make(map[uint64]int32)
	for i, k := range keys {
		id, ok := ids[k]
		if !ok {
			id = int32(len(ids))
			ids[k] = id
		}
		o.id[i] = id
	}
	last := make([]int32, len(ids))
	for i := range last {
		last[i] = never
	}
	o.next = make([]int32, len(keys))
	for i := len(keys) - 1; i >= 0; i-- {
		id := o.id[i]
		o.next[i] = last[id]
		last[id] = int32(i)
	}
	o.at = last // reuse: every entry is overwritten below
	for i := range o.at {
		o.at[i] = -1
	}
	o.heap = o.heap[:0]
}

// Access implements [Policy]. It panics if key is not the next key of the
// prepared trace, because the answer would silently be wrong.
func (o *Optimal) Access(key uint64) bool {
	if o.pos >= len(o.keys) || o.keys[o.pos] != key {
		panic("policy: Optimal accessed out of trace order")
	}
	id, next := o.id[o.pos], o.next[o.pos]
	o.pos++
	if i := o.at[id]; i >= 0 {
		o.heap[i].next = next
		o.up(int(i))
		return true
	}
	if len(o.heap) >= o.cap {
		o.popMax()
	}
	o.heap = append(o.heap, optimalEntry{next: next, id: id})
	o.at[id] = int32(len(o.heap) - 1)
	o.up(len(o.heap) - 1)
	return false
}

// Close implements [Policy].
func (o *Optimal) Close() {}

func (o *Optimal) popMax() {
	h := o.heap
	o.at[h[0].id] = -1
	last := len(h) - 1
	if last > 0 {
		h[0] = h[last]
		o.at[h[0].id] = 0
	}
	o.heap = h[:last]
	o.down(0)
}

func (o *Optimal) up(i int) {
	h := o.heap
	for i > 0 {
		p := (i - 1) / 2
		if h[p].next >= h[i].next {
			return
		}
		o.swap(i, p)
		i = p
	}
}

func (o *Optimal) down(i int) {
	h := o.heap
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		c := l
		if r := l + 1; r < len(h) && h[r].next > h[l].next {
			c = r
		}
		if h[i].next >= h[c].next {
			return
		}
		o.swap(i, c)
		i = c
	}
}

func (o *Optimal) swap(i, j int) {
	h := o.heap
	h[i], h[j] = h[j], h[i]
	o.at[h[i].id] = int32(i)
	o.at[h[j].id] = int32(j)
}
