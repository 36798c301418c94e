package tiered

import "encoding/json"

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
