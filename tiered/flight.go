package tiered

import "github.com/tiercache/tiercache/internal/flight"

// flights lets the concurrent misses of one key in this process share one
// L2 read and one load (internal/flight).
type flights[V any] = flight.Group[flightKey, flightResult[V]]

// flightKey names a flight: a key and its kind. Kinds fly apart: a Get that
// finds nothing must not make a GetOrLoad give up on loading, nor a
// background refresh hold up a caller's load.
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
