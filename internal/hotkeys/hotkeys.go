// Package hotkeys finds the most read keys of a process: it samples one read in
// hotSample and keeps the most-read keys (a Space-Saving summary,
// Metwally et al., 2005, of four times the keys it reports: its counts
// overestimate by at most samples/capacity, so the spare room keeps the
// tail from passing for hot), and hands each interval's counts to a
// publisher (tiered adds them to a sorted set in Redis, see l2.Tier.AddHot).
//
//	s := hotkeys.New(100, time.Minute)
//	go s.Run(publish)
//	s.Sample(key) // on every read
//	s.Close()
package hotkeys

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"time"
)

const hotSample = 64 // one read in hotSample is counted

// Sampler is the sampled summary. Samples reach it through a buffered
// channel, dropped when full: the read path never waits.
type Sampler struct {
	n        int // keys published
	capacity int // keys counted
	interval time.Duration
	samples  chan string
	counts   map[string]int64 // owned by the run goroutine
	stop     chan struct{}
	done     chan struct{}
}

// New returns a Sampler that reports n keys every interval.
func New(n int, interval time.Duration) *Sampler {
	return &Sampler{n: n, capacity: max(4*n, 64), interval: interval, samples: make(chan string, 1024), counts: make(map[string]int64, n),
		stop: make(chan struct{}), done: make(chan struct{})}
}

// Sample is called on every read with a key; it costs a random draw.
func (h *Sampler) Sample(key string) {
	if rand.Uint32()%hotSample != 0 {
		return
	}
	select {
	case h.samples <- key:
	default:
	}
}

// add counts one sample, Space-Saving style: a new key takes the place of
// the least counted one when the summary is full, inheriting its count.
func (h *Sampler) add(key string) {
	if _, ok := h.counts[key]; ok || len(h.counts) < h.capacity {
		h.counts[key]++
		return
	}
	var minKey string
	minCount := int64(-1)
	for k, c := range h.counts {
		if minCount < 0 || c < minCount {
			minKey, minCount = k, c
		}
	}
	delete(h.counts, minKey)
	h.counts[key] = minCount + 1
}

// Run folds samples in and publishes the summary every interval.
func (h *Sampler) Run(publish func(map[string]int64)) {
	defer close(h.done)
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case k := <-h.samples:
			h.add(k)
		case <-t.C:
			// Each interval's counts go out once; the set in Redis does
			// the aging.
			publish(h.top())
			clear(h.counts)
		}
	}
}

// top returns the n most counted keys and their counts.
func (h *Sampler) top() map[string]int64 {
	keys := make([]string, 0, len(h.counts))
	for k := range h.counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(h.counts[b], h.counts[a]) })
	out := make(map[string]int64, min(h.n, len(keys)))
	for _, k := range keys[:min(h.n, len(keys))] {
		out[k] = h.counts[k]
	}
	return out
}

// Close stops Run and waits for it.
func (h *Sampler) Close() {
	close(h.stop)
	<-h.done
}
