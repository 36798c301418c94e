package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tiercache/tiercache/cachesim/internal/trace"
)

// Attribution lines that SOURCES.md requires next to any result derived
// from the trace files.
const (
	cache2kCredit = "Trace files (c) headissue GmbH, Jens Wilke, CC BY 4.0"
	arcCredit     = `OLTP trace: N. Megiddo, D. S. Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache", FAST '03`
)

// The generated traces: 2 million accesses over 10^6 keys for Zipf, and for
// the loop 10^6 accesses per cache size.
const (
	zipfKeys     = 1_000_000
	zipfAccesses = 2_000_000
	loopAccesses = 1_000_000
)

// defaultSizes is used for a trace given by path when -sizes is not set.
var defaultSizes = []int{1000, 10_000, 100_000}

// workload is one trace to replay and how to describe it.
type workload struct {
	name   string
	desc   string // what the trace is, for the report
	sizes  []int  // default cache sizes in entries
	credit string // attribution line, if the trace needs one
	// keys returns the trace to replay at a cache of the given size. Only
	// the loop depends on the size; the others ignore it.
	keys        func(size int) ([]uint64, error)
	perCapacity bool
}

// standardNames lists the default run in report order.
var standardNames = []string{"oltp", "web07", "web12", "orm-busy", "orm-night", "zipf-1.01", "zipf-0.8", "loop"}

// lookupWorkload resolves a -trace value: a standard name, or else the path
// of a trace file whose format is chosen by its name (see package trace).
func lookupWorkload(arg string) (workload, error) {
	dir := trace.Dir()
	file := func(name string) func(int) ([]uint64, error) {
		return func(int) ([]uint64, error) { return trace.Load(filepath.Join(dir, name)) }
	}
	switch arg {
	case "oltp":
		return workload{name: arg, desc: "ARC OLTP (CODASYL database, one hour)", sizes: []int{250, 500, 1000, 2000},
			credit: arcCredit, keys: file("oltp.arc.gz")}, nil
	case "web07", "web12":
		return workload{name: arg, desc: "cache2k " + arg + " (HTTP product detail pages)", sizes: []int{500, 1000, 2000, 4000},
			credit: cache2kCredit, keys: file(arg + ".trace.xz")}, nil
	case "orm-busy", "orm-night":
		return workload{name: arg, desc: "cache2k " + arg + " (e-commerce database objects)", sizes: []int{1000, 2000, 5000, 10_000},
			credit: cache2kCredit, keys: file(arg + ".trace.xz")}, nil
	case "zipf-1.01", "zipf-0.8":
		s, seed := 1.01, uint64(1)
		if arg == "zipf-0.8" {
			s, seed = 0.8, 2
		}
		return workload{name: arg, desc: fmt.Sprintf("Zipf s=%v over 10^6 keys, seed %d", s, seed),
			sizes: []int{1000, 10_000, 50_000, 100_000},
			keys:  func(int) ([]uint64, error) { return trace.Zipf(s, zipfKeys, zipfAccesses, seed), nil }}, nil
	case "loop":
		return workload{name: arg, desc: "loop over 1.5 × size keys mixed with 20 % Zipf(1.01), seed = size",
			sizes: []int{1000, 5000, 10_000, 50_000}, perCapacity: true,
			keys: func(size int) ([]uint64, error) {
				return trace.Loop(size*3/2, loopAccesses, uint64(size)), nil
			}}, nil
	}
	if _, err := os.Stat(arg); err != nil {
		return workload{}, fmt.Errorf("-trace %q: not a standard trace (%s) nor a readable file: %w",
			arg, strings.Join(standardNames, ", "), err)
	}
	base := filepath.Base(arg)
	w := workload{name: base, desc: arg, sizes: defaultSizes,
		keys: func(int) ([]uint64, error) { return trace.Load(arg) }}
	// A copy of a shared trace under its own name keeps its attribution.
	switch {
	case base == "oltp.arc.gz":
		w.credit = arcCredit
	case base == "web07.trace.xz", base == "web12.trace.xz",
		base == "orm-busy.trace.xz", base == "orm-night.trace.xz":
		w.credit = cache2kCredit
	}
	return w, nil
}
