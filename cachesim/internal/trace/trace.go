// Package trace reads and generates the key sequences that cachesim replays.
//
// A trace is a []uint64 of keys, one per access. Files are decoded by name:
// "*.trace.xz" is a cache2k trace, "*.arc.gz" or "*.arc" an ARC trace, and
// anything else a key log with one key per line (gzip-compressed if the name
// ends in ".gz"). The generators are seeded, so the same call always returns
// the same keys.
package trace

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/ulikunitz/xz"
)

// DirEnv names the environment variable that overrides [Dir].
const DirEnv = "TIERCACHE_TRACES"

// sharedDir is where the traces live on the development machines.
const sharedDir = "/work/shared/data/traces"

// rootModule identifies the repository root when [Dir] walks up from the
// working directory.
const rootModule = "module github.com/tiercache/tiercache\n"

// Dir returns the directory that holds the trace files: $TIERCACHE_TRACES if
// set, else /work/shared/data/traces if it exists, else ../shared/data/traces
// relative to the repository root found above the working directory. The
// result may not exist; callers report that when they open a file.
func Dir() string {
	if d := os.Getenv(DirEnv); d != "" {
		return d
	}
	if fi, err := os.Stat(sharedDir); err == nil && fi.IsDir() {
		return sharedDir
	}
	wd, err := os.Getwd()
	if err != nil {
		return sharedDir
	}
	// The cachesim module sits inside the repository, so walking up finds
	// the root go.mod from both the repository root and cachesim/.
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.HasPrefix(string(b), rootModule) {
			return filepath.Join(d, "..", "shared", "data", "traces")
		}
		if filepath.Dir(d) == d {
			return sharedDir
		}
	}
}

// Load reads the trace file at path, choosing the decoder by the file name
// as the package documentation describes.
func Load(path string) ([]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<16)
	name := filepath.Base(path)
	var keys []uint64
	switch {
	case strings.HasSuffix(name, ".trace.xz"):
		keys, err = ReadCache2k(r)
	case strings.HasSuffix(name, ".arc.gz"), strings.HasSuffix(name, ".arc"):
		keys, err = withGzip(r, strings.HasSuffix(name, ".gz"), ReadARC)
	default:
		keys, err = withGzip(r, strings.HasSuffix(name, ".gz"), ReadKeyLog)
	}
	if err != nil {
		return nil, fmt.Errorf("trace: %s: %w", name, err)
	}
	return keys, nil
}

func withGzip(r io.Reader, gz bool, read func(io.Reader) ([]uint64, error)) ([]uint64, error) {
	if !gz {
		return read(r)
	}
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	return read(zr)
}

// ReadCache2k decodes a cache2k trace: an xz stream of big-endian int32
// keys, as Java's DataInputStream.readInt reads them. Negative keys map to
// distinct uint64 values through their unsigned 32-bit pattern.
func ReadCache2k(r io.Reader) ([]uint64, error) {
	xr, err := xz.NewReader(r)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(xr, 1<<16)
	var keys []uint64
	var b [4]byte
	for {
		if _, err := io.ReadFull(br, b[:]); err != nil {
			if err == io.EOF {
				return keys, nil
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("truncated key after %d keys", len(keys))
			}
			return nil, err
		}
		keys = append(keys, uint64(binary.BigEndian.Uint32(b[:])))
	}
}

// ReadARC decodes an ARC trace (already decompressed): each line is
// "start count ignored request_no" and stands for the keys start, start+1,
// ..., start+count-1.
func ReadARC(r io.Reader) ([]uint64, error) {
	sc := bufio.NewScanner(r)
	var keys []uint64
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		start, rest, ok1 := leadingUint(line)
		count, _, ok2 := leadingUint(rest)
		if !ok1 || !ok2 {
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			return nil, fmt.Errorf("line %d: want \"start count ...\", got %q", n, line)
		}
		for k := start; k < start+count; k++ {
			keys = append(keys, k)
		}
	}
	return keys, sc.Err()
}

// leadingUint parses the decimal number at the start of b after spaces and
// returns the rest of b. It stands in for strings.Fields and strconv, which
// made loading OLTP the slowest part of the tests under -race.
func leadingUint(b []byte) (n uint64, rest []byte, ok bool) {
	b = bytes.TrimLeft(b, " \t")
	i := 0
	for ; i < len(b) && '0' <= b[i] && b[i] <= '9'; i++ {
		if n > (math.MaxUint64-9)/10 {
			return 0, b, false
		}
		n = n*10 + uint64(b[i]-'0')
	}
	if i == 0 || (i < len(b) && b[i] != ' ' && b[i] != '\t' && b[i] != '\r') {
		return 0, b, false
	}
	return n, b[i:], true
}

// ReadKeyLog decodes a key log (already decompressed): one key per line,
// hashed to a uint64 with 64-bit FNV-1a. Hashing rather than numbering the
// keys keeps memory flat for large logs; a collision among a few million
// keys has a probability near 1e-7. A trailing "\r" is dropped and empty
// lines are skipped; other white space is part of the key.
func ReadKeyLog(r io.Reader) ([]uint64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var keys []uint64
	h := fnv.New64a()
	for sc.Scan() {
		line := sc.Bytes()
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if len(line) == 0 {
			continue
		}
		h.Reset()
		h.Write(line)
		keys = append(keys, h.Sum64())
	}
	return keys, sc.Err()
}
