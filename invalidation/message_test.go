package invalidation

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// Limits used by the decoder tests; small so that tests can exceed them.
const (
	testMaxKeys     = 4
	testMaxKeyBytes = 16
)

func keysMsg(instance string, epoch, seq uint64, keys ...string) message {
	return message{kind: kindKeys, instance: instance, epoch: epoch, seq: seq, sentAt: 1700000000123456789, keys: keys}
}

func heartbeatMsg(instance string, epoch, seq uint64) message {
	return message{kind: kindHeartbeat, instance: instance, epoch: epoch, seq: seq, sentAt: 1700000000123456789}
}

// encode returns m's frame.
func encode(m message) []byte { return m.append(nil) }

func TestMessageRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		m    message
	}{
		{"keys", keysMsg("pod-a", 42, 7, "user:1", "user:2")},
		{"one key", keysMsg("i", 1, 1, "k")},
		{"keys at the limits", keysMsg(strings.Repeat("i", maxInstanceID), ^uint64(0), ^uint64(0),
			strings.Repeat("a", testMaxKeyBytes), "b", "c", strings.Repeat("d", testMaxKeyBytes))},
		{"binary key", keysMsg("pod-a", 1, 2, "\x00\xff\n")},
		{"tags", message{kind: kindTags, instance: "pod-a", epoch: 42, seq: 8, sentAt: 1700000000123456789, keys: []string{"category:7", "url:/p/1"}}},
		{"heartbeat", heartbeatMsg("pod-a", 42, 7)},
		{"heartbeat at seq 0", heartbeatMsg("pod-b", 1, 0)},
		{"negative sentAt", message{kind: kindHeartbeat, instance: "x", epoch: 3, seq: 4, sentAt: -5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("prefix")
			b := tt.m.append(bytes.Clone(prefix))
			if !bytes.HasPrefix(b, prefix) {
				t.Fatalf("append(%q) = %q, want it to keep the prefix", prefix, b)
			}
			got, err := decodeMessage(b[len(prefix):], testMaxKeys, testMaxKeyBytes)
			if err != nil {
				t.Fatalf("decodeMessage(append(%+v)) error = %v", tt.m, err)
			}
			if !reflect.DeepEqual(got, tt.m) {
				t.Errorf("decodeMessage(append(m)) = %+v, want %+v", got, tt.m)
			}
		})
	}
}

func TestKeySize(t *testing.T) {
	for _, n := range []int{1, 127, 128, 1024, 16383, 16384} {
		k := strings.Repeat("k", n)
		m := keysMsg("i", 1, 1, k)
		want := len(encode(m)) - len(encode(keysMsg("i", 1, 1)))
		if got := keySize(k); got != want {
			t.Errorf("keySize(%d-byte key) = %d, want %d", n, got, want)
		}
	}
}

func TestDecodeMessageMalformed(t *testing.T) {
	valid := encode(keysMsg("pod-a", 42, 7, "user:1", "user:2"))
	hb := encode(heartbeatMsg("pod-a", 42, 7))
	with := func(b []byte, i int, v byte) []byte {
		b = bytes.Clone(b)
		b[i] = v
		return b
	}
	// A keys frame's header, instance id, epoch, seq and sentAt, without
	// the key count.
	head := with(hb[:len(hb)-1], 2, kindKeys)
	tests := []struct {
		name string
		b    []byte
		want string // what the error names
	}{
		{"nil", nil, "0 bytes"},
		{"keys message with seq 0", encode(keysMsg("pod-a", 42, 0, "user:1")), "sequence number 0"},
		{"empty", []byte{}, "0 bytes"},
		{"short", valid[:fixedSize-1], "27 bytes"},
		{"bad magic", with(valid, 0, 0xC9), "magic"},
		{"bad version", with(valid, 1, 2), "version 2"},
		{"version 0", with(valid, 1, 0), "version 0"},
		{"kind 0", with(valid, 2, 0), "kind 0"},
		{"bad kind", with(valid, 2, 4), "kind 4"},
		{"zero instance id", with(valid, 3, 0), "instance id of 0 bytes"},
		{"oversized instance id", append(with(valid, 3, maxInstanceID+1), make([]byte, 2*maxInstanceID)...), "instance id of 65 bytes"},
		{"instance id past the end", with(hb, 3, byte(len(hb)-fixedSize+1)), "instance id"},
		{"missing key count", head, "key count"},
		{"overlong key count", append(bytes.Clone(head), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), "key count"},
		{"non-minimal key count", append(bytes.Clone(head), 0x80, 0x00), "key count"},
		{"key count over limit", encode(keysMsg("pod-a", 1, 1, "a", "b", "c", "d", "e")), "key count"},
		{"key count over the keys present", append(bytes.Clone(head), 2, 1, 'a'), "key length"},
		{"key over limit", encode(keysMsg("pod-a", 1, 1, strings.Repeat("k", testMaxKeyBytes+1))), "key length"},
		{"zero-length key", encode(keysMsg("pod-a", 1, 1, "a", "")), "key length"},
		{"non-minimal key length", append(bytes.Clone(head), 1, 0x81, 0x00, 'a'), "key length"},
		{"truncated key", valid[:len(valid)-1], "key length"},
		{"key length past the end", append(bytes.Clone(head), 1, 10, 'a'), "key length"},
		{"missing key length", append(bytes.Clone(head), 1), "key length"},
		{"trailing bytes", append(bytes.Clone(valid), 0), "1 trailing bytes"},
		{"trailing bytes after heartbeat", append(bytes.Clone(hb), 'x', 'y'), "2 trailing bytes"},
		{"heartbeat with keys", encode(message{kind: kindHeartbeat, instance: "pod-a", epoch: 1, seq: 1, keys: []string{"a"}}), "key count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("decodeMessage(%x) panicked: %v", tt.b, p)
				}
			}()
			m, err := decodeMessage(tt.b, testMaxKeys, testMaxKeyBytes)
			if !errors.Is(err, errMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("decodeMessage(%x) = %+v, %v; want an error wrapping errMalformed about %q", tt.b, m, err, tt.want)
			}
		})
	}
}

func FuzzDecodeMessage(f *testing.F) {
	f.Add(encode(keysMsg("pod-a", 42, 7, "user:1", "user:2")))
	f.Add(encode(keysMsg(strings.Repeat("i", maxInstanceID), ^uint64(0), 1, strings.Repeat("k", testMaxKeyBytes))))
	f.Add(encode(heartbeatMsg("pod-a", 42, 7)))
	f.Add(encode(message{kind: kindHeartbeat, instance: "p", keys: []string{"a"}}))
	f.Add([]byte{})
	f.Add([]byte("not a frame at all, but long enough"))
	// A key count of 0 written in two bytes: a second encoding of one message.
	f.Add([]byte("\xc8\x01\x02\x010000000000000000000000000\x80\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b, testMaxKeys, testMaxKeyBytes)
		if err != nil {
			if !errors.Is(err, errMalformed) {
				t.Fatalf("decodeMessage(%x) error = %v, want it to wrap errMalformed", b, err)
			}
			return
		}
		if len(m.keys) > testMaxKeys || (m.kind == kindHeartbeat && len(m.keys) > 0) {
			t.Fatalf("decodeMessage(%x) = %+v, over the limits", b, m)
		}
		for _, k := range m.keys {
			if k == "" || len(k) > testMaxKeyBytes {
				t.Fatalf("decodeMessage(%x) accepted key %q", b, k)
			}
		}
		if again := encode(m); !bytes.Equal(again, b) {
			t.Fatalf("decodeMessage(%x) = %+v, which encodes as %x", b, m, again)
		}
	})
}
