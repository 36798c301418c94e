package tiered

import "encoding/json"

// Codec turns values into bytes for L2 and back; L1 holds decoded values.
// ID is stored in every envelope: a reader whose codec has another ID
// treats the entry as a miss, so that a codec change is safe in a rolling
// deploy. IDs 1 to 15 are reserved for tiercache; pick yours from 16 to 255.
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
