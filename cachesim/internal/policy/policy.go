// Package policy provides the caches that cachesim compares, behind one
// small interface, and a registry of them by name.
//
// Each policy holds at most a fixed number of entries and is driven like a
// read-through cache: look the key up, and on a miss store it. Policies are
// not safe for concurrent use; the harness gives each one its own goroutine.
package policy

import (
	"fmt"
	"slices"
)

// Policy is a cache under test.
type Policy interface {
	// Access looks key up and reports whether it was a hit. On a miss it
	// stores the key, as a read-through cache does after loading it.
	Access(key uint64) bool
	// Close releases the policy's goroutines, if any.
	Close()
}

// Clairvoyant is a Policy that must see the whole trace before the replay,
// such as [Optimal]. The harness calls Prepare once, then Access for each
// key of the same trace in order.
type Clairvoyant interface {
	Policy
	Prepare(keys []uint64)
}

// Async is a Policy that applies accesses on goroutines of its own, such
// as [Ristretto] and [Otter]. Its hit ratio depends on those goroutines getting a CPU,
// so the harness replays it while no other replay runs, as in a server with
// idle cores. Async is only a marker.
type Async interface {
	Policy
	Async()
}

// Constructor returns a new, empty policy that holds at most capacity
// entries. capacity is at least 1.
type Constructor func(capacity int) Policy

// registry maps each policy name to its constructor; names lists them in
// report order. Both are filled before main runs and only read afterwards.
var (
	registry = map[string]Constructor{}
	names    []string
)

func init() {
	Register("lru", NewLRU)
	Register("fifo", NewFIFO)
	Register("arc", NewARC)
	Register("2q", New2Q)
	Register("tinylfu", NewTinyLFU)
	Register("otter", NewOtter)
	Register("ristretto", NewRistretto)
	Register("ristretto-wait", NewRistrettoWait)
	Register("optimal", NewOptimal)
	registerTiercache()
}

// Register adds a policy under name. It panics if name is already taken,
// since that is a programming error in an init function.
func Register(name string, c Constructor) {
	if _, dup := registry[name]; dup {
		panic("policy: duplicate name " + name)
	}
	registry[name] = c
	names = append(names, name)
}

// Names returns the registered policy names in report order.
func Names() []string { return slices.Clone(names) }

// Lookup returns the constructor registered under name.
func Lookup(name string) (Constructor, error) {
	c, ok := registry[name]
	if !ok {
		return nil, fmt.Errorf("policy: unknown policy %q (have %v)", name, names)
	}
	return c, nil
}
