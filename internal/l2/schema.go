package l2

import (
	"strconv"
	"strings"
)

// Every key the protocol writes in a namespace ns, with its value and TTL.
// "#" cannot occur in a namespace, so no key of one namespace is a key of
// another; a user's key k lives only at ns:k.
//
//	key                       value                                     TTL
//	ns:k                      an envelope (envelope.go): a value, a     the value's TTL (stale windows
//	                          negative entry, or a lease                included); a lease's LeaseTTL;
//	                                                                    none while write-behind holds it
//	ns#refresh:k              a refresh lease (an envelope's token)     LeaseTTL
//	ns#tag:t                  set of the keys k tagged t                at least its longest-lived value's
//	ns#hot                    sorted set: key → decayed read count      a day past its last update
//	ns#hot:decay:<n>          claim of the n-th interval's halving      two HotKeysInterval
//	{ns#wb:s} or {ns#wb:s.n}  stream of shard s's writes (StreamKeys)   none: emptied as flushed
//	<stream>:owner            the consumer that holds shard s           LockTTL, renewed
//	ns#wb:dead                stream of writes given up                 none
//	ns#wb:shards              the shard count the streams were made for none
//
// The invalidation bus publishes on the channel tiercache:inv:ns (package
// invalidation).

// Key is where the value of key lives.
func Key(ns, key string) string { return ns + ":" + key }

// RefreshKey holds the lease of a refresh of key.
func RefreshKey(ns, key string) string { return ns + "#refresh:" + key }

// TagKey is the set of the keys tagged tag.
func TagKey(ns, tag string) string { return ns + "#tag:" + tag }

// HotKey is the sorted set of the namespace's most read keys.
func HotKey(ns string) string { return ns + "#hot" }

// LockKey is the lock of the write-behind shard whose stream is stream; it
// shares the stream's hash tag, so the two are in one slot.
func LockKey(stream string) string { return stream + ":owner" }

// DeadKey is the stream of the write-behind writes given up.
func DeadKey(ns string) string { return ns + "#wb:dead" }

// ShardsKey holds the shard count the write-behind streams were made for.
func ShardsKey(ns string) string { return ns + "#wb:shards" }

// StreamKeys names the shards' streams: "{<ns>#wb:<shard>}", and on a
// cluster "{<ns>#wb:<shard>.<n>}", with the first n that puts shard s in
// the s-th of Shards equal ranges of hash slots. Their slots are then
// spread evenly, and so over the masters, whatever the namespace: with
// the plain names, 8 shards would all land on two of three masters about
// once in 9 namespaces, and one master's death would stall more of them.
func StreamKeys(ns string, shards int, cluster bool) []string {
	keys := make([]string, shards)
	for s := range keys {
		base := ns + "#wb:" + strconv.Itoa(s)
		if !cluster {
			keys[s] = "{" + base + "}"
			continue
		}
		lo, hi := s*clusterSlots/shards, (s+1)*clusterSlots/shards
		for n := 0; ; n++ {
			tag := base + "." + strconv.Itoa(n)
			if slot := KeySlot(tag); lo <= slot && slot < hi {
				keys[s] = "{" + tag + "}"
				break
			}
		}
	}
	return keys
}

const clusterSlots = 16384

// KeySlot is Redis Cluster's hash slot of a key: CRC16 (XMODEM) mod
// 16384 of the key, or of its hash tag (what lies between the first '{'
// and the next '}', if that is not empty).
func KeySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % clusterSlots
}
