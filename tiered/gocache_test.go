package tiered_test

import (
	"github.com/eko/gocache/lib/v4/cache"

	"github.com/tiercache/tiercache/tiered"
)

// The adapter must keep satisfying gocache's interface.
var _ cache.CacheInterface[Product] = tiered.GocacheAdapter[Product]{}
