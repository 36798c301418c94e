package trace

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

func fnv64a(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

func TestLoadKeyLog(t *testing.T) {
	const log = "user:1\r\nuser:2\n\nuser:1\n user:1\nuser:3"
	want := []uint64{fnv64a("user:1"), fnv64a("user:2"), fnv64a("user:1"), fnv64a(" user:1"), fnv64a("user:3")}

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(log))
	zw.Close()

	dir := t.TempDir()
	tests := []struct {
		name string
		data []byte
	}{
		{"keys.log", []byte(log)},
		{"keys.log.gz", gz.Bytes()},
		{"keys", []byte(log)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name)
			if err := os.WriteFile(path, tt.data, 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("Load(%s) = %v, want %v", tt.name, got, want)
			}
		})
	}
}

func TestLoadMissing(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "nope.log")); err == nil {
		t.Error("Load of a missing file succeeded")
	}
}

func TestReadARC(t *testing.T) {
	got, err := ReadARC(strings.NewReader("10 3 0 1\n\n7 1 0 2\n12 0 0 3\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{10, 11, 12, 7}; !slices.Equal(got, want) {
		t.Errorf("ReadARC = %v, want %v", got, want)
	}
	if _, err := ReadARC(strings.NewReader("10\n")); err == nil {
		t.Error("ReadARC accepted a line without a count")
	}
}

func TestReadCache2k(t *testing.T) {
	ints := []int32{1, -1, 1 << 30, 0}
	var buf bytes.Buffer
	xw, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range ints {
		binary.Write(xw, binary.BigEndian, v)
	}
	xw.Close()
	got, err := ReadCache2k(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{1, 0xffffffff, 1 << 30, 0}; !slices.Equal(got, want) {
		t.Errorf("ReadCache2k = %v, want %v", got, want)
	}
}

func TestZipf(t *testing.T) {
	a := Zipf(0.8, 1000, 50_000, 1)
	if b := Zipf(0.8, 1000, 50_000, 1); !slices.Equal(a, b) {
		t.Fatal("Zipf with the same seed returned different keys")
	}
	count := make(map[uint64]int)
	for _, k := range a {
		if k < 1 || k > 1000 {
			t.Fatalf("key %d outside [1, 1000]", k)
		}
		count[k]++
	}
	// Key k has weight k^-0.8, so key 1 should come up 2^0.8 ≈ 1.74 times
	// as often as key 2.
	if r := float64(count[1]) / float64(count[2]); r < 1.5 || r > 2 {
		t.Errorf("count(1)/count(2) = %.2f, want about 1.74", r)
	}
}

func TestLoop(t *testing.T) {
	const loopKeys, accesses = 150, 30_000
	keys := Loop(loopKeys, accesses, 9)
	if len(keys) != accesses {
		t.Fatalf("len = %d, want %d", len(keys), accesses)
	}
	if again := Loop(loopKeys, accesses, 9); !slices.Equal(keys, again) {
		t.Fatal("Loop with the same seed returned different keys")
	}
	next, zipf := uint64(0), 0
	for i, k := range keys {
		if k < LoopBase {
			zipf++
			continue
		}
		if k != LoopBase+next {
			t.Fatalf("access %d: loop key %d, want %d", i, k-LoopBase, next)
		}
		next = (next + 1) % loopKeys
	}
	if share := float64(zipf) / accesses; share < 0.19 || share > 0.21 {
		t.Errorf("Zipf share = %.3f, want 0.20", share)
	}
}

// sharedTrace loads a trace file from Dir. Without the files it skips,
// except in CI, where a skip would let the suite pass without its data.
func sharedTrace(t *testing.T, name string) []uint64 {
	t.Helper()
	path := filepath.Join(Dir(), name)
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("trace %s missing in CI (set %s): %v", name, DirEnv, err)
		}
		t.Skipf("trace %s not available (set %s): %v", name, DirEnv, err)
	}
	keys, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestSharedTraces checks the cache2k reader against the counts in
// SOURCES.md. OLTP is left to cachesim's TestSelfCheck, which loads it
// anyway: under -race, loading it takes seconds.
func TestSharedTraces(t *testing.T) {
	tests := []struct {
		file               string
		accesses, distinct int
	}{
		{"web07.trace.xz", 76_118, 20_484},
		{"web12.trace.xz", 95_607, 13_756},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			keys := sharedTrace(t, tt.file)
			if len(keys) != tt.accesses {
				t.Errorf("accesses = %d, want %d", len(keys), tt.accesses)
			}
			distinct := make(map[uint64]bool)
			for _, k := range keys {
				distinct[k] = true
			}
			if len(distinct) != tt.distinct {
				t.Errorf("distinct keys = %d, want %d", len(distinct), tt.distinct)
			}
		})
	}
}
