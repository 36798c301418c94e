package redisclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestNodeGone: the errors after which the slot map is reloaded are those
// a dead or moved node causes, and no reply that says nothing of the
// topology.
func TestNodeGone(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{redis.Nil, false},
		{context.Canceled, false},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), true},
		{refused, true},
		{io.EOF, true},
		{redis.ErrClosed, true},
		{proto("CLUSTERDOWN The cluster is down"), true},
		{proto("MOVED 3999 127.0.0.1:6381"), true},
		{proto("TRYAGAIN Multiple keys request during rehashing of slot"), true},
		{proto("READONLY You can't write against a read only replica."), true},
		{proto("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		{proto("ERR Error running script"), false},
		{errors.New("tiered: not a Redis reply"), true},
	} {
		if got := nodeGone(tt.err); got != tt.want {
			t.Errorf("nodeGone(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// proto is a Redis error reply as go-redis returns it.
type proto string

func (e proto) Error() string { return string(e) }
func (proto) RedisError()     {}
