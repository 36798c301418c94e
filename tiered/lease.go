package tiered

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Leases fence L2 fills, after Facebook's memcache leases: a process that
// misses and is about to load puts a lease (an envelope with flagLease and
// a random token) on the key with SET NX, and writes its loaded value only
// through casFill, which replaces the lease if it is still there. A Set
// overwrites the lease and a Delete removes it, so a load that started
// before either can no longer write its older value over theirs.
//
// These calls need the go-redis client itself (a gocache store has no SET
// NX or scripts); with Config.Store alone, loads write without a lease.

// casFill sets KEYS[1] to ARGV[2] for ARGV[3] ms if it still holds the
// lease ARGV[1]; it returns nil (redis.Nil) when the lease is gone.
var casFill = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false`)

// leaseOrGet puts the lease ARGV[2] on KEYS[1] for ARGV[3] ms if the key
// is absent, holds another Redis type than a string (garbage: no writer
// of ours makes one), or still holds ARGV[1] (bytes the reader judged
// junk: corrupt, foreign or expired; "" for none), and returns 1;
// otherwise it returns what the key holds (a value, or another process's
// lease). One round trip, so a waiting process polls with one command.
var leaseOrGet = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'string' and t ~= 'none' then
  redis.call('DEL', KEYS[1])
end
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return v`)

// leaseRelease deletes KEYS[1] if it still holds the lease ARGV[1].
var leaseRelease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// tagAdd adds ARGV[1] to the tag set KEYS[1] and makes the set live at
// least ARGV[2] ms, as long as the longest-lived value it lists. A key of
// another type in its place is garbage, which it replaces.
var tagAdd = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'set' and t ~= 'none' then
  redis.call('DEL', KEYS[1])
end
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1`)

// dropUnlessType deletes KEYS[1] if it holds another Redis type than
// ARGV[1]: garbage in the place of a key of ours, which a write must not
// trip over forever.
var dropUnlessType = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= ARGV[1] and t ~= 'none' then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// leaseSkew is how much later than LeaseTTL from now a lease may end
// before it is taken for garbage: clocks of the processes may differ.
const leaseSkew = time.Second

// errBadLease is a lease that ends later than any lease can.
var errBadLease = errors.New("lease without an end in reach: garbage")

// errLeaseLost reports a fill refused because its lease was gone.
var errLeaseLost = errors.New("tiered: lease lost to a write, delete or expiry")

// acquireLease puts a lease on key and returns its bytes. When it cannot
// (held false), cur is what the key holds instead: a value written since,
// or another process's lease. junk is the bytes a reader judged junk (nil
// if none), which the lease may replace.
func (l *l2) acquireLease(ctx context.Context, key string, junk []byte, ttl time.Duration) (lease []byte, held bool, cur []byte, err error) {
	lease = newLease(ttl)
	err = l.call(ctx, func(ctx context.Context) error {
		v, err := leaseOrGet.Run(ctx, l.rdb, []string{key}, junk, lease, max(ttl.Milliseconds(), 1)).Result()
		if err != nil {
			return err
		}
		switch v := v.(type) {
		case int64:
			held = v == 1
		case string:
			cur = []byte(v)
		default:
			return fmt.Errorf("lease script returned %T", v)
		}
		return nil
	})
	return lease, held, cur, err
}

// newLease returns a lease envelope with a random token, expiring after ttl.
func newLease(ttl time.Duration) []byte {
	var token [16]byte
	_, _ = rand.Read(token[:])
	return appendEnvelope(nil, 0, flagLease, time.Now().Add(ttl), token[:])
}

// fillLeased writes b under key for ttl if key still holds lease.
func (l *l2) fillLeased(ctx context.Context, key string, lease, b []byte, ttl time.Duration) error {
	return l.call(ctx, func(ctx context.Context) error {
		err := casFill.Run(ctx, l.rdb, []string{key}, lease, b, max(ttl.Milliseconds(), 1)).Err()
		if errors.Is(err, redis.Nil) {
			return errLeaseLost
		}
		return err
	})
}

// releaseLease gives up a lease that will not be filled (the load failed,
// or its value is not to be cached), so that the next process to miss can
// take one instead of waiting out LeaseTTL.
func (l *l2) releaseLease(ctx context.Context, key string, lease []byte) error {
	return l.call(ctx, func(ctx context.Context) error {
		return leaseRelease.Run(ctx, l.rdb, []string{key}, lease).Err()
	})
}

// addTags records each key in the set of each tag, for call or must. One
// round trip: the scripts are pipelined, and on Redis Cluster go-redis
// splits the pipeline by node.
func (l *l2) addTags(ctx context.Context, ns string, keys, tags []string, ttl time.Duration) error {
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			for _, t := range tags {
				// Eval, not Run: a pipeline cannot fall back from EVALSHA.
				tagAdd.Eval(ctx, p, []string{tagKey(ns, t)}, k, max(ttl.Milliseconds(), 1))
			}
		}
		return nil
	})
	return err
}

func tagKey(ns, tag string) string { return ns + "#tag:" + tag }
