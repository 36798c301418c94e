package l2

import (
	"fmt"
	"strconv"
	"strings"
)

// EntryID is a Redis stream entry ID.
type EntryID struct{ MS, Seq uint64 }

func ParseEntryID(s string) (EntryID, error) {
	ms, seq, ok := strings.Cut(s, "-")
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return EntryID{}, fmt.Errorf("tiered: bad stream entry ID %q", s)
	}
	return EntryID{a, b}, nil
}

func (a EntryID) Less(b EntryID) bool { return a.MS < b.MS || (a.MS == b.MS && a.Seq < b.Seq) }
