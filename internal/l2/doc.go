// Package l2 is tiercache's Redis protocol: the key schema (schema.go lists
// every key, value and TTL), the envelope every value travels in, the Lua
// scripts, and the fenced operations built on them (leases, refresh
// leases, tag sets, write-behind puts), all behind one Tier that bounds
// every call with a timeout and a circuit breaker.
//
//	t := l2.New(l2.Config{Store: gocacheredis.NewRedis(rdb), Redis: rdb, Timeout: 100 * time.Millisecond})
//	lease, held, cur, err := t.AcquireLease(ctx, l2.Key(ns, "k"), nil, 3*time.Second)
//	if held {
//		err = t.FillLeased(ctx, l2.Key(ns, "k"), lease, b, time.Minute)
//	}
//
// A Tier over a gocache store alone (Config.Redis nil) has only Get, Set,
// Put and DelMany; everything else needs the go-redis client.
package l2
