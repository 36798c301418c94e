package main

import (
	"fmt"
	"math"
)

// oltpPublished holds the published hit ratios (percent) of LRU and
// Bélády's OPT on the ARC OLTP trace. They pin down both the trace reader
// (914,145 keys) and the replay loop: a harness that disagrees is wrong.
var oltpPublished = []struct {
	cell
	want float64
}{
	{cell{"lru", 250}, 16.47},
	{cell{"lru", 500}, 23.45},
	{cell{"lru", 1000}, 32.83},
	{cell{"lru", 2000}, 42.47},
	{cell{"optimal", 250}, 38.43},
	{cell{"optimal", 500}, 46.42},
	{cell{"optimal", 1000}, 53.61},
	{cell{"optimal", 2000}, 60.40},
}

// checkTolerance is how far (in percentage points) a result may be from a
// published value; the values are published with two decimals.
const checkTolerance = 0.05

// selfCheck compares the OLTP results in have with the published values,
// replaying keys for any cell that have lacks, and returns one message per
// cell that is off.
func selfCheck(have map[cell]float64, keys []uint64) ([]string, error) {
	var missing []cell
	for _, p := range oltpPublished {
		if _, ok := have[p.cell]; !ok {
			missing = append(missing, p.cell)
		}
	}
	extra, err := simulate(missing, func(int) []uint64 { return keys }, nil)
	if err != nil {
		return nil, err
	}
	var failures []string
	for _, p := range oltpPublished {
		got, ok := have[p.cell]
		if !ok {
			got = extra[p.cell]
		}
		if math.Abs(got-p.want) > checkTolerance {
			failures = append(failures, fmt.Sprintf("oltp %s at %d entries: got %.2f %%, want %.2f %% (±%.2f)",
				p.policy, p.size, got, p.want, checkTolerance))
		}
	}
	return failures, nil
}
