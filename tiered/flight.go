package tiered

import "sync"

// flights lets the concurrent misses of one key in this process share one
// L2 read and one load. It is singleflight's idea (golang.org/x/sync),
// written out because a batch must know, before it calls its loader, which
// of its keys it leads and which are already in flight for other callers;
// singleflight starts the leader's function on its own goroutine and does
// not say who leads.
type flights[V any] struct {
	mu sync.Mutex
	m  map[flightKey]*flight[V]
}

// flightKey names a flight: a key, and what the flight does for it. Gets,
// loads and refreshes of one key fly apart: a Get that finds nothing must
// not make a GetOrLoad give up on loading, and a background refresh must
// not hold up a caller's load.
type flightKey struct {
	kind flightKind
	key  string
}

type flightKind uint8

const (
	flightGet     flightKind = iota // an L2 read for Get
	flightLoad                      // an L2 read, then a load, for GetOrLoad and GetOrLoadMany
	flightRefresh                   // a background refresh
)

// tier is where a flight found its value.
type tier uint8

const (
	tierNone   tier = iota // nowhere: a Get that found nothing, or a failure
	tierL1                 // this process's L1 (another flight filled it)
	tierL2                 // L2
	tierLoader             // the loader
	tierStale              // a stale copy, served while refreshing or because refreshing failed
)

var tierNames = [...]string{tierNone: "none", tierL1: "l1", tierL2: "l2", tierLoader: "loader", tierStale: "stale"}

func (t tier) String() string { return tierNames[t] }

// flight is one key's fill in progress. res is written before done is
// closed and read only after.
type flight[V any] struct {
	done    chan struct{}
	res     flightResult[V]
	callers int // final once done is closed
}

// join returns the flight for key, creating it if there is none; leader
// reports that the caller created it and must finish it.
func (fs *flights[V]) join(key flightKey) (fl *flight[V], leader bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fl = fs.m[key]; fl != nil {
		fl.callers++
		return fl, false
	}
	if fs.m == nil {
		fs.m = make(map[flightKey]*flight[V])
	}
	fl = &flight[V]{done: make(chan struct{}), callers: 1}
	fs.m[key] = fl
	return fl, true
}

// finish hands res to every caller of key's flight. Callers arriving after
// it start a new flight.
func (fs *flights[V]) finish(key flightKey, fl *flight[V], res flightResult[V]) {
	fl.res = res
	fs.mu.Lock()
	delete(fs.m, key)
	fs.mu.Unlock()
	close(fl.done)
}
