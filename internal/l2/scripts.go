package l2

import "github.com/redis/go-redis/v9"

// The Lua scripts of the protocol. Each runs on one key's node (its KEYS
// share a slot on Redis Cluster), so each is atomic where it runs.

// casFill sets KEYS[1] to ARGV[2] for ARGV[3] ms if it still holds the
// lease ARGV[1]; it returns nil (redis.Nil) when the lease is gone.
var casFill = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false`)

// LeaseOrGet puts the lease ARGV[2] on KEYS[1] for ARGV[3] ms if the key
// is absent, holds another Redis type than a string (garbage: no writer
// of ours makes one), or still holds ARGV[1] (bytes the reader judged
// junk: corrupt, foreign or expired; "" for none), and returns 1;
// otherwise it returns what the key holds (a value, or another process's
// lease). One round trip, so a waiting process polls with one command.
var LeaseOrGet = redis.NewScript(`
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

// LeaseRelease deletes KEYS[1] if it still holds the lease ARGV[1].
var LeaseRelease = redis.NewScript(`
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

// DropUnlessType deletes KEYS[1] if it holds another Redis type than
// ARGV[1]: garbage in the place of a key of ours, which a write must not
// trip over forever.
var DropUnlessType = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= ARGV[1] and t ~= 'none' then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// CASReplace sets KEYS[1] to ARGV[2] for ARGV[3] ms if it still holds the
// bytes whose SHA-1 is ARGV[1]: a refresh replaces the value it read, and
// nothing written since.
var CASReplace = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and redis.sha1hex(v) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0`)

// WBPut sets KEYS[1] to ARGV[1] for ARGV[4] ms (0: no expiry) unless the
// value there carries a newer write's entry ID than ARGV[2], ARGV[3] (ms,
// seq), or, in mode ARGV[5] "put", the same one: a value already flushed
// is not made pending again. It returns 1 if it wrote, 0 if not. The ID
// is read from the envelope's write ID extension (see envelope.go).
var WBPut = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'string' and t ~= 'none' then
  redis.call('DEL', KEYS[1])
end
local cur = redis.call('GET', KEYS[1])
if cur and #cur >= 32 and string.byte(cur, 1) == 199 and bit.band(string.byte(cur, 4), 16) ~= 0 then
  local ms, seq = struct.unpack('>I8>I8', cur, 17)
  local ams, aseq = tonumber(ARGV[2]), tonumber(ARGV[3])
  if ms > ams or (ms == ams and (seq > aseq or (seq == aseq and ARGV[5] == 'put'))) then
    return 0
  end
end
if ARGV[4] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
end
return 1`)

// RenewLock extends the lock KEYS[1] by ARGV[2] ms if ARGV[1] holds it.
var RenewLock = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)

// WBAck acknowledges and deletes the entries ARGV[3..] of the stream
// KEYS[1] for group ARGV[2] if consumer ARGV[1] holds the shard's lock
// KEYS[2] ("" skips the check), and returns -1 if it does not. Deleting
// them keeps the stream's length the queue's length.
var WBAck = redis.NewScript(`
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
redis.call('XACK', KEYS[1], ARGV[2], unpack(ARGV, 3))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 3))`)
