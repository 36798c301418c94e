package invalidation

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A message on the bus is a small binary frame: keys only, never values,
// so a message can neither leak data nor install it.
//
//	magic 0xC8 | version 1 | kind | len(instance) | instance
//	| epoch u64 | seq u64 | sentAt i64 (unix ns) | uvarint count | count × (uvarint len | key)
//
// A keys or tags message carries the publisher's sequence number for it; a
// heartbeat carries the last sequence number the publisher used, which is
// how a receiver notices a message it never got. A tags message has the
// frame of a keys message, its entries naming tags rather than keys.
const (
	msgMagic   = 0xC8
	msgVersion = 1

	kindKeys      = 1
	kindHeartbeat = 2
	kindTags      = 3

	maxInstanceID = 64
	// fixedSize is the frame without the instance id, keys and their lengths.
	fixedSize = 4 + 8 + 8 + 8
)

type message struct {
	kind     byte
	instance string
	epoch    uint64
	seq      uint64
	sentAt   int64
	keys     []string
}

var errMalformed = errors.New("invalidation: malformed message")

func (m *message) append(b []byte) []byte {
	b = append(b, msgMagic, msgVersion, m.kind, byte(len(m.instance)))
	b = append(b, m.instance...)
	b = binary.BigEndian.AppendUint64(b, m.epoch)
	b = binary.BigEndian.AppendUint64(b, m.seq)
	b = binary.BigEndian.AppendUint64(b, uint64(m.sentAt))
	b = binary.AppendUvarint(b, uint64(len(m.keys)))
	for _, k := range m.keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
	}
	return b
}

// keySize is what key adds to a frame.
func keySize(key string) int {
	return binary.PutUvarint(make([]byte, binary.MaxVarintLen64), uint64(len(key))) + len(key)
}

// decodeMessage parses b, refusing anything malformed or over the limits:
// the channel is open to every client of the Redis, so its bytes are input.
func decodeMessage(b []byte, maxKeys, maxKeyBytes int) (message, error) {
	var m message
	if len(b) < fixedSize {
		return m, fmt.Errorf("%w: %d bytes", errMalformed, len(b))
	}
	if b[0] != msgMagic || b[1] != msgVersion {
		return m, fmt.Errorf("%w: magic %#x version %d", errMalformed, b[0], b[1])
	}
	m.kind = b[2]
	if m.kind != kindKeys && m.kind != kindHeartbeat && m.kind != kindTags {
		return m, fmt.Errorf("%w: kind %d", errMalformed, m.kind)
	}
	n := int(b[3])
	if n == 0 || n > maxInstanceID || len(b) < fixedSize+n {
		return m, fmt.Errorf("%w: instance id of %d bytes", errMalformed, n)
	}
	m.instance = string(b[4 : 4+n])
	b = b[4+n:]
	m.epoch = binary.BigEndian.Uint64(b)
	m.seq = binary.BigEndian.Uint64(b[8:])
	m.sentAt = int64(binary.BigEndian.Uint64(b[16:]))
	if m.kind != kindHeartbeat && m.seq == 0 {
		return m, fmt.Errorf("%w: keys or tags message with sequence number 0", errMalformed) // they count from 1
	}
	b = b[24:]
	count, w := binary.Uvarint(b)
	if w <= 0 || (w > 1 && b[w-1] == 0) || count > uint64(maxKeys) || (m.kind == kindHeartbeat && count != 0) {
		return m, fmt.Errorf("%w: key count", errMalformed)
	}
	b = b[w:]
	if count > 0 {
		m.keys = make([]string, 0, count)
	}
	for range count {
		l, w := binary.Uvarint(b)
		if w <= 0 || (w > 1 && b[w-1] == 0) || l == 0 || l > uint64(maxKeyBytes) || l > uint64(len(b)-w) {
			return m, fmt.Errorf("%w: key length", errMalformed)
		}
		m.keys = append(m.keys, string(b[w:w+int(l)]))
		b = b[w+int(l):]
	}
	if len(b) != 0 {
		return m, fmt.Errorf("%w: %d trailing bytes", errMalformed, len(b))
	}
	return m, nil
}
