package tiered_test

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/tiered"
)

func TestNewRedisClient(t *testing.T) {
	c, err := tiered.NewRedisClient("redis://user:secret@127.0.0.1:6390/2")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o := c.(*redis.Client).Options()
	if !o.ContextTimeoutEnabled || o.ReadTimeout != 500*time.Millisecond || o.MaxRetries != 1 || o.DialerRetries != 1 ||
		o.Password != "secret" || o.DB != 2 {
		t.Errorf("options = %+v, want cache timeouts, password and DB from the URL", o)
	}

	c, err = tiered.NewRedisClient("redis://127.0.0.1:6390/0?read_timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.(*redis.Client).Options().ReadTimeout; got != 2*time.Second {
		t.Errorf("ReadTimeout = %v, want the URL's 2s", got)
	}

	cc, err := tiered.NewRedisClient("redis+cluster://127.0.0.1:7000?addr=127.0.0.1:7001")
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if o := cc.(*redis.ClusterClient).Options(); len(o.Addrs) != 2 || !o.ContextTimeoutEnabled {
		t.Errorf("cluster options = %+v, want 2 seeds and context timeouts", o)
	}

	for _, bad := range []string{"127.0.0.1:6379", "http://x", "redis://:pw@host:notaport"} {
		_, err := tiered.NewRedisClient(bad)
		if err == nil {
			t.Errorf("NewRedisClient(%q): want an error", bad)
		} else if strings.Contains(err.Error(), "pw@") {
			t.Errorf("NewRedisClient(%q) error leaks the password: %v", bad, err)
		}
	}
}
