// Package l1 is the in-process tier: W-TinyLFU (an adaptive admission
// window in front of ristretto) over entries that hold the caller's decoded
// values, with read-your-write Set and a cost budget in bytes:
//
//	c, err := l1.New[item](64<<20, &clk, requests)
//	c.Set(key, &l1.Entry[item]{Value: v, Cost: l1.EntryCost(key, n)}, ttl)
//	e, ok := c.Get(key)
//
// The facade reaches it through its localTier seam (tiered/local.go).
package l1
