package tiered

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// Codec turns values into bytes for L2 and back. L1 holds decoded values,
// so a codec runs only when a value crosses the network.
//
// ID names the codec inside every stored envelope. A reader whose codec has
// another ID treats the entry as a miss instead of misreading it, which is
// what makes a codec change safe during a rolling deploy. IDs 1 to 15 are
// reserved for tiercache; pick your own from 16 to 255.
type Codec interface {
	ID() uint8
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSONCodec is the default Codec: encoding/json, with ID 1.
type JSONCodec struct{}

// ID returns 1.
func (JSONCodec) ID() uint8 { return 1 }

// Marshal encodes v with encoding/json.
func (JSONCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes data into v with encoding/json.
func (JSONCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// The L2 envelope, big-endian:
//
//	offset size field
//	0      1    magic 0xC7 (not a printable byte, so a foreign string value fails fast)
//	1      1    format version (1)
//	2      1    codec ID
//	3      1    flags (flagNegative, flagCompressed, flagLease, flagFresh, flagWriteID)
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
	headerSize      = 16

	flagNegative   = 1 << 0
	flagCompressed = 1 << 1 // reserved: no writer sets it yet, so a reader refuses it
	// flagLease marks a placeholder that a loading process holds on the key;
	// its payload is the holder's token. Readers treat it as a miss.
	flagLease = 1 << 2
	// flagFresh says that the payload starts with a 12-byte extension: the
	// fresh-until time (Unix ms, 8 bytes; the header's expiry is then the
	// stale-until) and the duration of the load that produced the value
	// (µs, 4 bytes), which early refresh needs.
	flagFresh = 1 << 3
	// flagWriteID marks a value written by write-behind: the payload starts
	// with a 16-byte extension, the write's stream entry ID (milliseconds,
	// sequence; 8 bytes each), before any fresh extension. The value has no
	// expiry while it waits for the source (pending), and an expiry once
	// flushed; the write-behind script (writebehind.go) reads the ID at this
	// offset so that no older write overwrites a newer one.
	flagWriteID = 1 << 4
	knownFlags  = flagNegative | flagLease | flagFresh | flagWriteID
	freshExt    = 12
	writeIDExt  = 16
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
type envelope struct {
	codec    uint8
	flags    uint8
	expiry   int64 // Unix milliseconds, 0 for none
	payload  []byte
	negative bool
	lease    bool
	fresh    int64 // fresh-until, Unix ms; 0: the same as expiry
	delta    int64 // the load's duration in µs; 0: unknown
	writeID  entryID
}

// appendEnvelope appends the envelope for payload to dst.
func appendEnvelope(dst []byte, codec, flags uint8, expiry time.Time, payload []byte) []byte {
	dst = appendHeader(dst, codec, flags, expiry, len(payload))
	return append(dst, payload...)
}

// appendFreshEnvelope appends an envelope whose value is fresh until fresh
// and may be served stale until expiry; delta is the load's duration.
func appendFreshEnvelope(dst []byte, codec, flags uint8, fresh, expiry time.Time, delta time.Duration, payload []byte) []byte {
	dst = appendHeader(dst, codec, flags|flagFresh, expiry, freshExt+len(payload))
	dst = binary.BigEndian.AppendUint64(dst, uint64(fresh.UnixMilli()))
	dst = binary.BigEndian.AppendUint32(dst, uint32(min(max(delta.Microseconds(), 0), math.MaxUint32)))
	return append(dst, payload...)
}

// appendWriteEnvelope appends the envelope of a write-behind value with
// entry ID id: pending (no expiry) when fresh is zero, else fresh until
// fresh and servable until expiry.
func appendWriteEnvelope(dst []byte, codec uint8, id entryID, fresh, expiry time.Time, payload []byte) []byte {
	if fresh.IsZero() {
		dst = appendHeader(dst, codec, flagWriteID, time.Time{}, writeIDExt+len(payload))
	} else {
		dst = appendHeader(dst, codec, flagWriteID|flagFresh, expiry, writeIDExt+freshExt+len(payload))
	}
	dst = binary.BigEndian.AppendUint64(dst, id.ms)
	dst = binary.BigEndian.AppendUint64(dst, id.seq)
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

// decodeEnvelope parses b without allocating: every length is checked against
// the bytes actually present and against maxPayload before anything trusts it.
func decodeEnvelope(b []byte, wantCodec uint8, maxPayload int) (envelope, error) {
	if len(b) < headerSize {
		return envelope{}, errEnvelopeShort
	}
	if b[0] != envelopeMagic {
		return envelope{}, errEnvelopeMagic
	}
	if b[1] != envelopeVersion {
		return envelope{}, fmt.Errorf("%w: %d", errEnvelopeVersion, b[1])
	}
	e := envelope{codec: b[2], flags: b[3], expiry: int64(binary.BigEndian.Uint64(b[4:12]))}
	if e.flags&^knownFlags != 0 {
		return envelope{}, fmt.Errorf("%w: %#x", errEnvelopeFlags, e.flags)
	}
	n := binary.BigEndian.Uint32(b[12:16])
	if uint64(n) > uint64(maxPayload) {
		return envelope{}, fmt.Errorf("%w: %d bytes", errEnvelopeTooBig, n)
	}
	if uint64(n) != uint64(len(b)-headerSize) {
		return envelope{}, fmt.Errorf("%w: header says %d, have %d", errEnvelopeLength, n, len(b)-headerSize)
	}
	e.negative = e.flags&flagNegative != 0
	e.lease = e.flags&flagLease != 0
	// A negative entry or a lease has no value to decode, so its codec does
	// not matter.
	if !e.negative && !e.lease && e.codec != wantCodec {
		return envelope{}, fmt.Errorf("%w: %d, want %d", errEnvelopeCodec, e.codec, wantCodec)
	}
	e.payload = b[headerSize:]
	if e.flags&flagWriteID != 0 {
		if len(e.payload) < writeIDExt {
			return envelope{}, fmt.Errorf("%w: %d bytes for a %d-byte extension", errEnvelopeLength, len(e.payload), writeIDExt)
		}
		e.writeID = entryID{ms: binary.BigEndian.Uint64(e.payload), seq: binary.BigEndian.Uint64(e.payload[8:])}
		e.payload = e.payload[writeIDExt:]
	}
	if e.flags&flagFresh != 0 {
		if len(e.payload) < freshExt {
			return envelope{}, fmt.Errorf("%w: %d bytes for a %d-byte extension", errEnvelopeLength, len(e.payload), freshExt)
		}
		e.fresh = int64(binary.BigEndian.Uint64(e.payload))
		e.delta = int64(binary.BigEndian.Uint32(e.payload[8:]))
		e.payload = e.payload[freshExt:]
	}
	return e, nil
}

// remaining returns how long the entry has left at now; ok is false when it
// has expired. An entry without expiry has forever, reported as 0.
func (e envelope) remaining(now time.Time) (d time.Duration, ok bool) {
	if e.expiry == 0 {
		return 0, true
	}
	d = time.UnixMilli(e.expiry).Sub(now)
	return d, d > 0
}
