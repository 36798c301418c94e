// Package clock provides the time source of the cache: a Clock that tests
// can replace, and Coarse, a ticking copy of it that hot paths read with an
// atomic load.
//
//	var k clock.Coarse // zero value: the system clock, exact until started
//	k.Start()
//	now := k.Now()     // Unix ns, at most Tick old
//	k.Close()
package clock

import (
	"sync"
	"sync/atomic"
	"time"
)

// Clock is a source of the time. System is the production one; tests pass
// a fake, or run under testing/synctest.
type Clock interface {
	Now() time.Time
}

// System is the wall clock.
type System struct{}

// Now returns time.Now().
func (System) Now() time.Time { return time.Now() }

// Tick is Coarse's resolution.
const Tick = 10 * time.Millisecond

// Coarse is a wall clock read with an atomic load: once started, a
// goroutine stores the time every Tick, so that L1 hits check freshness
// without calling time.Now, which costs about as much as the rest of a
// hit. It starts only when asked (the ticking goroutine is not free
// either), and reads the exact time until then. Its zero value reads
// System; Source, if set before use, replaces it, and is always read
// exactly.
type Coarse struct {
	Source Clock

	ns      atomic.Int64
	running atomic.Bool
	mu      sync.Mutex // guards starting and stopping
	stopped bool
	stop    chan struct{}
	done    chan struct{}
}

// Exact returns the time from the source, not the ticking copy.
func (k *Coarse) Exact() int64 {
	if k.Source == nil {
		return time.Now().UnixNano()
	}
	return k.Source.Now().UnixNano()
}

// Start starts the ticking goroutine if it is not running.
func (k *Coarse) Start() {
	if k.running.Load() {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	// A Source of the caller's (a test's fake) is read exactly: its jumps
	// must be seen at once, not up to a Tick later.
	if k.running.Load() || k.stopped || k.Source != nil {
		return
	}
	k.stop, k.done = make(chan struct{}), make(chan struct{})
	k.ns.Store(k.Exact())
	k.running.Store(true)
	go func() {
		defer close(k.done)
		t := time.NewTicker(Tick)
		defer t.Stop()
		for {
			select {
			case <-k.stop:
				return
			case <-t.C:
				k.ns.Store(k.Exact())
			}
		}
	}()
}

// Now returns the time in Unix ns: coarsely once the clock runs, exactly
// before.
func (k *Coarse) Now() int64 {
	if k.running.Load() {
		return k.ns.Load()
	}
	return k.Exact()
}

// Close stops the ticking goroutine for good.
func (k *Coarse) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopped = true
	if k.running.Load() {
		close(k.stop)
		<-k.done
	}
}
