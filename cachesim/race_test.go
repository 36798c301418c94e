//go:build race

package main

// raceEnabled reports whether the test binary was built with -race, under
// which sync.Pool drops items on purpose: ristretto's access buffers lose
// most reads, and with them the hit ratios that TestDefaultL1Thresholds
// measures.
const raceEnabled = true
