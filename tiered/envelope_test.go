package tiered

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	exp := time.UnixMilli(1_900_000_000_000)
	tests := []struct {
		name    string
		flags   uint8
		expiry  time.Time
		payload []byte
	}{
		{"value", 0, exp, []byte(`{"id":1}`)},
		{"no expiry", 0, time.Time{}, []byte(`"x"`)},
		{"negative", flagNegative, exp, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := appendEnvelope(nil, 1, tt.flags, tt.expiry, tt.payload)
			e, err := decodeEnvelope(b, 1, 1<<20)
			if err != nil {
				t.Fatalf("decodeEnvelope: %v", err)
			}
			if !bytes.Equal(e.payload, tt.payload) || e.negative != (tt.flags&flagNegative != 0) {
				t.Errorf("decoded %+v, want payload %q flags %#x", e, tt.payload, tt.flags)
			}
			if want := tt.expiry; !want.IsZero() && e.expiry != want.UnixMilli() {
				t.Errorf("expiry = %d, want %d", e.expiry, want.UnixMilli())
			}
		})
	}
}

func TestEnvelopeRejects(t *testing.T) {
	good := appendEnvelope(nil, 1, 0, time.Time{}, []byte("{}"))
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, errEnvelopeShort},
		{"short", good[:headerSize-1], errEnvelopeShort},
		{"magic", mutate(func(b []byte) []byte { b[0] = '{'; return b }), errEnvelopeMagic},
		{"version", mutate(func(b []byte) []byte { b[1] = 2; return b }), errEnvelopeVersion},
		{"codec", mutate(func(b []byte) []byte { b[2] = 7; return b }), errEnvelopeCodec},
		{"compressed", mutate(func(b []byte) []byte { b[3] = flagCompressed; return b }), errEnvelopeFlags},
		{"truncated", good[:len(good)-1], errEnvelopeLength},
		{"trailing", append(bytes.Clone(good), 'x'), errEnvelopeLength},
		{"huge length", mutate(func(b []byte) []byte { b[12], b[13] = 0xff, 0xff; return b }), errEnvelopeTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decodeEnvelope(tt.in, 1, 1<<20); !errors.Is(err, tt.want) {
				t.Errorf("decodeEnvelope(%q) error = %v, want %v", tt.in, err, tt.want)
			}
		})
	}
}

// FuzzDecodeEnvelope feeds arbitrary bytes, as a foreign or corrupt Redis
// value would be, to the decoder and the codec behind it. It must never
// panic, never accept a payload over the limit, and round-trip what it
// accepts. The seed corpus in testdata/fuzz runs with every go test.
func FuzzDecodeEnvelope(f *testing.F) {
	f.Add(appendEnvelope(nil, 1, 0, time.UnixMilli(1), []byte(`{"id":1,"name":"x"}`)))
	f.Add(appendEnvelope(nil, 1, flagNegative, time.Time{}, nil))
	f.Add(appendFreshEnvelope(nil, 1, 0, time.UnixMilli(1), time.UnixMilli(2), 50*time.Millisecond, []byte(`{"id":1}`)))
	f.Add([]byte("hello"))
	f.Add([]byte("\xc7\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff"))
	const limit = 4096
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEnvelope(b, 1, limit)
		if err != nil {
			return
		}
		if len(e.payload) > limit {
			t.Fatalf("accepted a %d-byte payload over the %d limit", len(e.payload), limit)
		}
		again := appendEnvelope(nil, e.codec, e.flags, time.UnixMilli(e.expiry), e.payload)
		if e.flags&flagFresh != 0 {
			again = appendFreshEnvelope(nil, e.codec, e.flags&^flagFresh, time.UnixMilli(e.fresh), time.UnixMilli(e.expiry),
				time.Duration(e.delta)*time.Microsecond, e.payload)
		}
		if e.expiry != 0 && !bytes.Equal(again, b) {
			t.Fatalf("re-encoding %q gave %q", b, again)
		}
		var v struct {
			ID   int    `json:"id"`
			Name string `json:"name"`
		}
		_ = JSONCodec{}.Unmarshal(e.payload, &v) // must not panic
	})
}
