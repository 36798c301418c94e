package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/cachesim/internal/trace"
)

// requireTraces returns the path of the OLTP trace, standing for the shared
// traces. Without them it skips t, except in CI, where a skip would let the
// suite pass without its data.
func requireTraces(t *testing.T) string {
	t.Helper()
	path := filepath.Join(trace.Dir(), "oltp.arc.gz")
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("traces missing in CI (set %s): %v", trace.DirEnv, err)
		}
		t.Skipf("traces not available (set %s): %v", trace.DirEnv, err)
	}
	return path
}

// TestSelfCheck replays OLTP through LRU and OPT and requires the published
// hit ratios to two decimals. Without the trace files it skips, except in
// CI, where a skip would let the suite pass without its data.
func TestSelfCheck(t *testing.T) {
	keys, err := trace.Load(requireTraces(t))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(keys), 914_145; got != want {
		t.Fatalf("OLTP has %d keys, want %d", got, want)
	}
	var cells []cell
	for _, p := range oltpPublished {
		cells = append(cells, p.cell)
	}
	got, err := simulate(cells, func(int) []uint64 { return keys }, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range oltpPublished {
		if g, w := fmt.Sprintf("%.2f", got[p.cell]), fmt.Sprintf("%.2f", p.want); g != w {
			t.Errorf("%s on OLTP at %d entries = %s %%, want %s %%", p.policy, p.size, g, w)
		}
	}
	failures, err := selfCheck(got, keys)
	if err != nil || len(failures) > 0 {
		t.Errorf("selfCheck = %q, %v; want no failures", failures, err)
	}
}

func TestSelfCheckReportsCell(t *testing.T) {
	have := map[cell]float64{}
	for _, p := range oltpPublished {
		have[p.cell] = p.want
	}
	have[cell{"lru", 1000}] = 32.90
	failures, err := selfCheck(have, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(failures) != 1 || !strings.Contains(failures[0], "lru at 1000 entries") {
		t.Errorf("selfCheck = %q, want one failure naming lru at 1000 entries", failures)
	}
}

// TestRunKeyLog runs the command on a user's key log.
func TestRunKeyLog(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "keys.log")
	var b strings.Builder
	for i := range 2000 {
		fmt.Fprintf(&b, "user:%d\n", i%7*(i%5)) // a few hot keys
	}
	if err := os.WriteFile(log, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	png := filepath.Join(dir, "out.png")
	var stdout, stderr bytes.Buffer
	err := run([]string{"-trace", log, "-sizes", "2,4", "-policies", "lru,fifo,optimal", "-md", "-plot", png}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"### keys.log", "| policy | 2 | 4 | mean |", "| optimal |", "2,000 accesses"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "headissue") || strings.Contains(out, "Megiddo") {
		t.Errorf("a user's log got a trace attribution:\n%s", out)
	}
	if fi, err := os.Stat(png); err != nil || fi.Size() == 0 {
		t.Errorf("plot %s not written: %v", png, err)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-policies", "nope"},
		{"-sizes", "0"},
		{"-trace", "no/such/file.log"},
	} {
		var stdout, stderr bytes.Buffer
		if err := run(args, &stdout, &stderr); err == nil {
			t.Errorf("run(%q) succeeded, want an error", args)
		}
	}
}
