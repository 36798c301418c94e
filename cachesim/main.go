// Command cachesim replays key traces through caches of a fixed capacity in
// entries and reports their hit ratios.
//
// Usage:
//
//	go run ./cachesim [-trace name|path ...] [-sizes 250,500] [-policies lru,arc,...] [-plot out.png] [-md] [-v]
//
// Without -trace it runs the standard set (oltp, web07, web12, orm-busy,
// orm-night, zipf-1.01, zipf-0.8, loop), each at its own default sizes. A
// -trace that is not a standard name is a file: "*.trace.xz" (cache2k),
// "*.arc.gz" (ARC) or a key log with one key per line, optionally gzipped
// ("*.gz"). The trace files are looked up in $TIERCACHE_TRACES, else
// /work/shared/data/traces, else ../shared/data/traces next to the
// repository.
//
// Every run that replays oltp also checks LRU and Bélády's OPT on it against
// their published hit ratios and exits with status 1 if a cell is off.
//
// Each (policy, size) replay runs on its own goroutine with its own cache,
// so the table is the same on every run, except for ristretto and otter,
// whose caches are not deterministic. Those two run while no other replay
// runs, so that their own goroutines find a free CPU.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tiercache/tiercache/cachesim/internal/policy"
)

// listFlag collects repeated or comma-separated flag values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "cachesim:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cachesim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var traces, policies listFlag
	fs.Var(&traces, "trace", "standard trace name or trace file path; repeatable or comma-separated (default: "+strings.Join(standardNames, ",")+")")
	sizesFlag := fs.String("sizes", "", "comma-separated cache sizes in entries (default: per trace)")
	fs.Var(&policies, "policies", "comma-separated policies (default: "+strings.Join(policy.Names(), ",")+")")
	plotOut := fs.String("plot", "", "write a PNG per trace; with several traces, -NAME is inserted before the extension")
	md := fs.Bool("md", false, "print Markdown tables")
	verbose := fs.Bool("v", false, "log the duration of each replay to stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	if len(traces) == 0 {
		traces = standardNames
	}
	if len(policies) == 0 {
		policies = policy.Names()
	}
	for _, p := range policies {
		if _, err := policy.Lookup(p); err != nil {
			return err
		}
	}
	sizes, err := parseSizes(*sizesFlag)
	if err != nil {
		return err
	}
	var workloads []workload
	for _, name := range traces {
		w, err := lookupWorkload(name)
		if err != nil {
			return err
		}
		workloads = append(workloads, w)
	}

	start := time.Now()
	var credits, failures []string
	checked := false
	for _, w := range workloads {
		t0 := time.Now()
		ws := w.sizes
		if sizes != nil {
			ws = sizes
		}
		keysFor, err := keysBySize(w, ws)
		if err != nil {
			return err
		}
		var log func(cell, time.Duration)
		if *verbose {
			log = func(c cell, d time.Duration) {
				fmt.Fprintf(stderr, "cachesim: %s %s %d: %v\n", w.name, c.policy, c.size, d.Round(time.Millisecond))
			}
		}
		ratio, err := simulate(cellsFor(policies, ws), keysFor, log)
		if err != nil {
			return err
		}
		t := &table{w: w, summary: summarize(w, ws, keysFor), policies: policies, sizes: ws, ratio: ratio}
		t.write(stdout, *md)
		if *plotOut != "" {
			if err := t.plot(plotPath(*plotOut, w.name, len(workloads) == 1)); err != nil {
				return err
			}
		}
		if w.credit != "" && !slices.Contains(credits, w.credit) {
			credits = append(credits, w.credit)
		}
		if w.name == "oltp" || w.name == "oltp.arc.gz" {
			f, err := selfCheck(ratio, keysFor(0))
			if err != nil {
				return err
			}
			failures = append(failures, f...)
			checked = true
		}
		fmt.Fprintf(stderr, "cachesim: %s done in %v\n", w.name, time.Since(t0).Round(time.Millisecond))
	}

	if slices.ContainsFunc(policies, func(p string) bool { return strings.HasPrefix(p, "ristretto") || p == "otter" }) {
		fmt.Fprintln(stdout, "NOTE: ristretto and otter are not deterministic (lossy buffers drained on their own goroutines, random hash seeds, and for ristretto sampled eviction and dropped Sets): their rows vary between runs, otter's by up to about 4 points at small sizes, ristretto's by much more.")
		fmt.Fprintln(stdout)
	}
	if *md && len(credits) > 0 {
		fmt.Fprintln(stdout, "Trace credits:")
		fmt.Fprintln(stdout)
		for i := range credits {
			credits[i] = "- " + credits[i]
		}
	}
	for _, c := range credits {
		fmt.Fprintln(stdout, c)
	}
	fmt.Fprintf(stderr, "cachesim: total %v\n", time.Since(start).Round(time.Millisecond))
	if len(failures) > 0 {
		return fmt.Errorf("self-check failed (the trace reader or a policy is wrong):\n  %s", strings.Join(failures, "\n  "))
	}
	if checked {
		fmt.Fprintln(stderr, "cachesim: self-check passed: LRU and OPT on OLTP match the published hit ratios")
	}
	return nil
}

// parseSizes parses -sizes; it returns nil for an empty flag.
func parseSizes(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var sizes []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-sizes: %q is not a positive integer", f)
		}
		sizes = append(sizes, n)
	}
	slices.Sort(sizes)
	return slices.Compact(sizes), nil
}

// summarize describes the trace size for the report.
func summarize(w workload, sizes []int, keysFor func(int) []uint64) string {
	if w.perCapacity {
		return fmt.Sprintf("%s accesses per size", group(len(keysFor(sizes[0]))))
	}
	keys := keysFor(0)
	distinct := make(map[uint64]struct{}, len(keys)/4)
	for _, k := range keys {
		distinct[k] = struct{}{}
	}
	return fmt.Sprintf("%s accesses, %s distinct keys", group(len(keys)), group(len(distinct)))
}

// group formats n with thousands separators.
func group(n int) string {
	s := strconv.Itoa(n)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
