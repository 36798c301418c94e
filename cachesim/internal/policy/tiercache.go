package policy

import (
	"context"
	"fmt"

	"github.com/tiercache/tiercache/tiered"
)

// Tiercache is this repository's L1 as tiered.Cache uses it by default,
// driven through the public API the ordinary way: GetOrLoad, with an L1
// only (no Redis) whose byte budget holds exactly capacity entries.
type Tiercache struct {
	c      *tiered.Cache[struct{}]
	key    []byte
	load   tiered.LoadFunc[struct{}]
	loaded bool
}

// tiercacheEntryCost is what L1 charges for one simulated entry: the
// envelope header and freshness extension (28 bytes), the JSON of
// struct{}{} (2), the 16-byte key and tiered's per-entry overhead (272).
const tiercacheEntryCost = 28 + 2 + 16 + 272

func registerTiercache() { Register("tiercache", NewTiercache) }

// NewTiercache returns tiered's default L1 sized to capacity entries.
func NewTiercache(capacity int) Policy {
	c, err := tiered.New[struct{}](tiered.Config{
		L1MaxBytes: int64(capacity) * tiercacheEntryCost, EarlyRefresh: -1, NegativeTTL: -1,
	})
	if err != nil {
		panic(fmt.Sprintf("policy: tiercache: %v", err)) // a bad capacity is a programming error here
	}
	t := &Tiercache{c: c, key: make([]byte, 16)}
	t.load = func(context.Context, string) (struct{}, error) { t.loaded = true; return struct{}{}, nil }
	return t
}

func (t *Tiercache) Access(key uint64) bool {
	const hex = "0123456789abcdef"
	for i := 15; i >= 0; i-- {
		t.key[i] = hex[key&15]
		key >>= 4
	}
	t.loaded = false
	_, _ = t.c.GetOrLoad(context.Background(), string(t.key), t.load)
	return !t.loaded
}

func (t *Tiercache) Close() { t.c.Close() }

// Async marks Tiercache as running goroutines of its own (ristretto's).
func (t *Tiercache) Async() {}
