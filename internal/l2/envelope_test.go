package l2

import (
	"bytes"
	"encoding/json"
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
		{"negative", FlagNegative, exp, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := AppendEnvelope(nil, 1, tt.flags, tt.expiry, tt.payload)
			e, err := DecodeEnvelope(b, 1, 1<<20)
			if err != nil {
				t.Fatalf("DecodeEnvelope: %v", err)
			}
			if !bytes.Equal(e.Payload, tt.payload) || e.Negative != (tt.flags&FlagNegative != 0) {
				t.Errorf("decoded %+v, want payload %q flags %#x", e, tt.payload, tt.flags)
			}
			if want := tt.expiry; !want.IsZero() && e.Expiry != want.UnixMilli() {
				t.Errorf("expiry = %d, want %d", e.Expiry, want.UnixMilli())
			}
		})
	}
}

func TestEnvelopeRejects(t *testing.T) {
	good := AppendEnvelope(nil, 1, 0, time.Time{}, []byte("{}"))
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, errEnvelopeShort},
		{"short", good[:HeaderSize-1], errEnvelopeShort},
		{"magic", mutate(func(b []byte) []byte { b[0] = '{'; return b }), errEnvelopeMagic},
		{"version", mutate(func(b []byte) []byte { b[1] = 2; return b }), errEnvelopeVersion},
		{"codec", mutate(func(b []byte) []byte { b[2] = 7; return b }), errEnvelopeCodec},
		{"compressed", mutate(func(b []byte) []byte { b[3] = FlagCompressed; return b }), errEnvelopeFlags},
		{"truncated", good[:len(good)-1], errEnvelopeLength},
		{"trailing", append(bytes.Clone(good), 'x'), errEnvelopeLength},
		{"huge length", mutate(func(b []byte) []byte { b[12], b[13] = 0xff, 0xff; return b }), errEnvelopeTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeEnvelope(tt.in, 1, 1<<20); !errors.Is(err, tt.want) {
				t.Errorf("DecodeEnvelope(%q) error = %v, want %v", tt.in, err, tt.want)
			}
		})
	}
}

// FuzzDecodeEnvelope feeds arbitrary bytes, as a foreign or corrupt Redis
// value would be, to the decoder and the codec behind it. It must never
// panic, never accept a payload over the limit, and round-trip what it
// accepts. The seed corpus in testdata/fuzz runs with every go test.
func FuzzDecodeEnvelope(f *testing.F) {
	f.Add(AppendEnvelope(nil, 1, 0, time.UnixMilli(1), []byte(`{"id":1,"name":"x"}`)))
	f.Add(AppendEnvelope(nil, 1, FlagNegative, time.Time{}, nil))
	f.Add(AppendFreshEnvelope(nil, 1, 0, time.UnixMilli(1), time.UnixMilli(2), 50*time.Millisecond, []byte(`{"id":1}`)))
	f.Add([]byte("hello"))
	f.Add([]byte("\xc7\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff"))
	const limit = 4096
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEnvelope(b, 1, limit)
		if err != nil {
			return
		}
		if len(e.Payload) > limit {
			t.Fatalf("accepted a %d-byte payload over the %d limit", len(e.Payload), limit)
		}
		again := AppendEnvelope(nil, e.Codec, e.Flags, time.UnixMilli(e.Expiry), e.Payload)
		if e.Flags&FlagFresh != 0 {
			again = AppendFreshEnvelope(nil, e.Codec, e.Flags&^FlagFresh, time.UnixMilli(e.Fresh), time.UnixMilli(e.Expiry),
				time.Duration(e.Delta)*time.Microsecond, e.Payload)
		}
		if e.Expiry != 0 && !bytes.Equal(again, b) {
			t.Fatalf("re-encoding %q gave %q", b, again)
		}
		var v struct {
			ID   int    `json:"id"`
			Name string `json:"name"`
		}
		_ = json.Unmarshal(e.Payload, &v) // must not panic
	})
}
