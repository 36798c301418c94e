package l2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// The L2 envelope, big-endian:
//
//	offset size field
//	0      1    magic 0xC7 (not a printable byte, so a foreign string value fails fast)
//	1      1    format version (1)
//	2      1    codec ID
//	3      1    flags (FlagNegative, FlagCompressed, FlagLease, FlagFresh, FlagWriteID)
//	4      8    absolute expiry, Unix milliseconds (0: none)
//	12     4    payload length
//	16     n    payload
//
// The expiry travels inside the value because a reader needs it to bound its
// L1 copy, and reading it there costs no second round trip (gocache's
// GetWithTTL costs two).
const (
	envelopeMagic   = 0xC7
	envelopeVersion = 1
	HeaderSize      = 16

	FlagNegative   = 1 << 0
	FlagCompressed = 1 << 1 // reserved: no writer sets it yet, so a reader refuses it
	// FlagLease marks a placeholder that a loading process holds on the key;
	// its payload is the holder's token. Readers treat it as a miss.
	FlagLease = 1 << 2
	// FlagFresh says that the payload starts with a 12-byte extension: the
	// fresh-until time (Unix ms, 8 bytes; the header's expiry is then the
	// stale-until) and the duration of the load that produced the value
	// (µs, 4 bytes), which early refresh needs.
	FlagFresh = 1 << 3
	// FlagWriteID marks a value written by write-behind: the payload starts
	// with a 16-byte extension, the write's stream entry ID (milliseconds,
	// sequence; 8 bytes each), before any fresh extension. The value has no
	// expiry while it waits for the source (pending), and an expiry once
	// flushed; the write-behind script (writebehind.go) reads the ID at this
	// offset so that no older write overwrites a newer one.
	FlagWriteID = 1 << 4
	knownFlags  = FlagNegative | FlagLease | FlagFresh | FlagWriteID
	FreshExt    = 12
	WriteIDExt  = 16
)

// Errors that decoding an envelope may wrap. All of them make the entry a miss.
var (
	errEnvelopeShort   = errors.New("envelope shorter than its header")
	errEnvelopeMagic   = errors.New("not a tiercache envelope")
	errEnvelopeVersion = errors.New("unknown envelope version")
	errEnvelopeCodec   = errors.New("envelope written by another codec")
	errEnvelopeFlags   = errors.New("envelope has unknown flags")
	errEnvelopeLength  = errors.New("envelope payload length mismatch")
	errEnvelopeTooBig  = errors.New("envelope payload over the size limit")
)

// envelope is the decoded header of an L2 value; payload aliases the input.
type Envelope struct {
	Codec    uint8
	Flags    uint8
	Expiry   int64 // Unix milliseconds, 0 for none
	Payload  []byte
	Negative bool
	Lease    bool
	Fresh    int64 // fresh-until, Unix ms; 0: the same as expiry
	Delta    int64 // the load's duration in µs; 0: unknown
	WriteID  EntryID
}

// AppendEnvelope appends the envelope for payload to dst.
func AppendEnvelope(dst []byte, codec, flags uint8, expiry time.Time, payload []byte) []byte {
	dst = appendHeader(dst, codec, flags, expiry, len(payload))
	return append(dst, payload...)
}

// AppendFreshEnvelope appends an envelope whose value is fresh until fresh
// and may be served stale until expiry; delta is the load's duration.
func AppendFreshEnvelope(dst []byte, codec, flags uint8, fresh, expiry time.Time, delta time.Duration, payload []byte) []byte {
	dst = appendHeader(dst, codec, flags|FlagFresh, expiry, FreshExt+len(payload))
	dst = binary.BigEndian.AppendUint64(dst, uint64(fresh.UnixMilli()))
	dst = binary.BigEndian.AppendUint32(dst, uint32(min(max(delta.Microseconds(), 0), math.MaxUint32)))
	return append(dst, payload...)
}

// AppendWriteEnvelope appends the envelope of a write-behind value with
// entry ID id: pending (no expiry) when fresh is zero, else fresh until
// fresh and servable until expiry.
func AppendWriteEnvelope(dst []byte, codec uint8, id EntryID, fresh, expiry time.Time, payload []byte) []byte {
	if fresh.IsZero() {
		dst = appendHeader(dst, codec, FlagWriteID, time.Time{}, WriteIDExt+len(payload))
	} else {
		dst = appendHeader(dst, codec, FlagWriteID|FlagFresh, expiry, WriteIDExt+FreshExt+len(payload))
	}
	dst = binary.BigEndian.AppendUint64(dst, id.MS)
	dst = binary.BigEndian.AppendUint64(dst, id.Seq)
	if !fresh.IsZero() {
		dst = binary.BigEndian.AppendUint64(dst, uint64(fresh.UnixMilli()))
		dst = binary.BigEndian.AppendUint32(dst, 0)
	}
	return append(dst, payload...)
}

func appendHeader(dst []byte, codec, flags uint8, expiry time.Time, n int) []byte {
	var exp int64
	if !expiry.IsZero() {
		exp = expiry.UnixMilli()
	}
	dst = append(dst, envelopeMagic, envelopeVersion, codec, flags)
	dst = binary.BigEndian.AppendUint64(dst, uint64(exp))
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

// DecodeEnvelope parses b without allocating: every length is checked against
// the bytes actually present and against maxPayload before anything trusts it.
func DecodeEnvelope(b []byte, wantCodec uint8, maxPayload int) (Envelope, error) {
	if len(b) < HeaderSize {
		return Envelope{}, errEnvelopeShort
	}
	if b[0] != envelopeMagic {
		return Envelope{}, errEnvelopeMagic
	}
	if b[1] != envelopeVersion {
		return Envelope{}, fmt.Errorf("%w: %d", errEnvelopeVersion, b[1])
	}
	e := Envelope{Codec: b[2], Flags: b[3], Expiry: int64(binary.BigEndian.Uint64(b[4:12]))}
	if e.Flags&^knownFlags != 0 {
		return Envelope{}, fmt.Errorf("%w: %#x", errEnvelopeFlags, e.Flags)
	}
	n := binary.BigEndian.Uint32(b[12:16])
	if uint64(n) > uint64(maxPayload) {
		return Envelope{}, fmt.Errorf("%w: %d bytes", errEnvelopeTooBig, n)
	}
	if uint64(n) != uint64(len(b)-HeaderSize) {
		return Envelope{}, fmt.Errorf("%w: header says %d, have %d", errEnvelopeLength, n, len(b)-HeaderSize)
	}
	e.Negative = e.Flags&FlagNegative != 0
	e.Lease = e.Flags&FlagLease != 0
	// A negative entry or a lease has no value to decode, so its codec does
	// not matter.
	if !e.Negative && !e.Lease && e.Codec != wantCodec {
		return Envelope{}, fmt.Errorf("%w: %d, want %d", errEnvelopeCodec, e.Codec, wantCodec)
	}
	e.Payload = b[HeaderSize:]
	if e.Flags&FlagWriteID != 0 {
		if len(e.Payload) < WriteIDExt {
			return Envelope{}, fmt.Errorf("%w: %d bytes for a %d-byte extension", errEnvelopeLength, len(e.Payload), WriteIDExt)
		}
		e.WriteID = EntryID{MS: binary.BigEndian.Uint64(e.Payload), Seq: binary.BigEndian.Uint64(e.Payload[8:])}
		e.Payload = e.Payload[WriteIDExt:]
	}
	if e.Flags&FlagFresh != 0 {
		if len(e.Payload) < FreshExt {
			return Envelope{}, fmt.Errorf("%w: %d bytes for a %d-byte extension", errEnvelopeLength, len(e.Payload), FreshExt)
		}
		e.Fresh = int64(binary.BigEndian.Uint64(e.Payload))
		e.Delta = int64(binary.BigEndian.Uint32(e.Payload[8:]))
		e.Payload = e.Payload[FreshExt:]
	}
	return e, nil
}

// Remaining returns how long the entry has left at now; ok is false when it
// has expired. An entry without expiry has forever, reported as 0.
func (e Envelope) Remaining(now time.Time) (d time.Duration, ok bool) {
	if e.Expiry == 0 {
		return 0, true
	}
	d = time.UnixMilli(e.Expiry).Sub(now)
	return d, d > 0
}
