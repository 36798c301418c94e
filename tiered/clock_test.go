package tiered_test

import (
	"sync/atomic"
	"time"
)

// fakeClock is a Config.Clock that moves only when told: tests of TTLs and
// stale windows advance it instead of sleeping through them, so that what
// they check does not depend on the machine's speed.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time { return time.Unix(0, c.ns.Load()) }

func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
