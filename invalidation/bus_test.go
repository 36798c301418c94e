package invalidation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// discardLogger is for buses under test: the tests check counters and
// callbacks, not log lines.
var discardLogger = slog.New(slog.DiscardHandler)

// newClient returns a go-redis client for addr, closed when t ends. Tests
// that run on a cluster too take theirs from redistest.Target.Client.
func newClient(t *testing.T, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newChannel returns a channel that no other test or run uses.
func newChannel(t *testing.T) string { return "tiercache:inv:" + redistest.Namespace(t) }

// recorder is a recording fake for Config.Evict and Config.Flush. The bus
// calls them on its receiving goroutine; the test reads the channels.
type recorder struct {
	evicts  chan []string
	flushes chan string
}

func newRecorder() *recorder {
	// Big enough that no test fills them: a full channel would block the
	// bus's goroutine, and with it Close.
	return &recorder{evicts: make(chan []string, 4096), flushes: make(chan string, 4096)}
}

// config returns a Config on channel ch that reports to r.
func (r *recorder) config(ch string) Config {
	return Config{
		Channel: ch,
		Evict:   func(keys []string) { r.evicts <- slices.Clone(keys) },
		Flush:   func(reason string) { r.flushes <- reason },
		Logger:  discardLogger,
	}
}

// nextEvict waits for the next Evict call.
func (r *recorder) nextEvict(t *testing.T, timeout time.Duration) []string {
	t.Helper()
	select {
	case keys := <-r.evicts:
		return keys
	case <-time.After(timeout):
		t.Fatalf("no Evict within %v", timeout)
		return nil
	}
}

// waitFlush waits for a Flush with reason, skipping other reasons.
func (r *recorder) waitFlush(t *testing.T, reason string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	var others []string
	for {
		select {
		case got := <-r.flushes:
			if got == reason {
				return
			}
			others = append(others, got)
		case <-deadline:
			t.Fatalf("no Flush(%q) within %v (got %q)", reason, timeout, others)
		}
	}
}

// drainFlushes returns the flushes so far other than "fresh", which any
// recovery from a hiccup of the test machine may add.
func (r *recorder) drainFlushes() []string {
	var got []string
	for {
		select {
		case reason := <-r.flushes:
			if reason != "fresh" {
				got = append(got, reason)
			}
		default:
			return got
		}
	}
}

// newBus starts a bus, closed when t ends.
func newBus(t *testing.T, rdb redis.UniversalClient, cfg Config) *Bus {
	t.Helper()
	b, err := New(rdb, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// waitFresh waits for b's first heartbeat to come back.
func waitFresh(t *testing.T, b *Bus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if !b.WaitFresh(ctx) {
		t.Fatalf("WaitFresh = false after 5s; stats %+v", b.Stats())
	}
}

// eventually polls cond, for state that no callback reports (Fresh).
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		<-tick.C
	}
	return time.Since(start)
}

// pair returns two fresh buses on one channel of r, each with its own
// client.
func pair(t *testing.T, r redistest.Target, cfgA func(*Config)) (a, b *Bus, ra, rb *recorder) {
	t.Helper()
	ch := newChannel(t)
	ra, rb = newRecorder(), newRecorder()
	ac := ra.config(ch)
	if cfgA != nil {
		cfgA(&ac)
	}
	a = newBus(t, r.Client(t), ac)
	b = newBus(t, r.Client(t), rb.config(ch))
	waitFresh(t, a)
	waitFresh(t, b)
	return a, b, ra, rb
}

// ctxTimeout returns a context that ends after d, or when t ends.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestPublishReachesOtherBus(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		a, b, ra, rb := pair(t, r, nil)
		if a.InstanceID() == b.InstanceID() || len(a.InstanceID()) != 16 {
			t.Fatalf("InstanceIDs %q and %q, want two distinct 16-digit defaults", a.InstanceID(), b.InstanceID())
		}
		ctx := ctxTimeout(t, 5*time.Second)

		if err := a.Publish(ctx, "user:1", "user:2"); err != nil {
			t.Fatalf("a.Publish: %v", err)
		}
		if got, want := rb.nextEvict(t, 2*time.Second), []string{"user:1", "user:2"}; !reflect.DeepEqual(got, want) {
			t.Errorf("b's Evict(%q), want %q", got, want)
		}

		// a hears its own message before b's (one channel, one order): if a
		// applied its own keys, its first Evict would be them.
		if err := b.Publish(ctx, "from-b"); err != nil {
			t.Fatalf("b.Publish: %v", err)
		}
		if got, want := ra.nextEvict(t, 2*time.Second), []string{"from-b"}; !reflect.DeepEqual(got, want) {
			t.Errorf("a's first Evict(%q), want %q: a must not apply its own keys", got, want)
		}
		// Likewise b hears its own "from-b" before a's "barrier".
		if err := a.Publish(ctx, "barrier"); err != nil {
			t.Fatalf("a.Publish: %v", err)
		}
		if got, want := rb.nextEvict(t, 2*time.Second), []string{"barrier"}; !reflect.DeepEqual(got, want) {
			t.Errorf("b's second Evict(%q), want %q: b must not apply its own keys", got, want)
		}

		if s := a.Stats(); s.SentMessages != 2 || s.SentKeys != 3 || s.ReceivedKeys != 1 || !s.Fresh {
			t.Errorf("a.Stats() = %+v, want 2 messages and 3 keys sent, 1 key received, fresh", s)
		}
		if s := b.Stats(); s.SentMessages != 1 || s.SentKeys != 1 || s.ReceivedKeys != 3 || s.ReceivedMessages < 2 {
			t.Errorf("b.Stats() = %+v, want 1 message and 1 key sent, 3 keys received", s)
		}
		if got := append(ra.drainFlushes(), rb.drainFlushes()...); len(got) > 0 {
			t.Errorf("Flush(%q), want none", got)
		}
	})
}

func TestWaitFresh(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ch := newChannel(t)
		rec := newRecorder()
		b := newBus(t, r.Client(t), rec.config(ch))
		if b.StalenessBound() != 2*time.Second {
			t.Errorf("StalenessBound() = %v, want the 2s default", b.StalenessBound())
		}
		start := time.Now()
		if !b.WaitFresh(ctxTimeout(t, time.Second)) {
			t.Fatalf("WaitFresh = false within 1s on a live Redis; stats %+v", b.Stats())
		}
		t.Logf("fresh after %v", time.Since(start))
		if s := b.Stats(); !s.Fresh || !b.Fresh() {
			t.Errorf("after WaitFresh: Fresh() = %v, Stats() = %+v; want fresh", b.Fresh(), s)
		}
		// Turning fresh flushes whatever was filled before.
		rec.waitFlush(t, "fresh", time.Second)
	})
}

func TestWaitFreshWithoutRedis(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close() // nothing listens there now

	b := newBus(t, newClient(t, addr), newRecorder().config(newChannel(t)))
	if b.WaitFresh(ctxTimeout(t, 200*time.Millisecond)) {
		t.Fatal("WaitFresh = true with no Redis")
	}
	if err := b.Publish(ctxTimeout(t, time.Second), "k"); err == nil {
		t.Error("Publish with no Redis: want an error")
	}
	if s := b.Stats(); s.Fresh || s.ReceiveErrors == 0 || s.PublishErrors == 0 {
		t.Errorf("Stats() = %+v, want not fresh, receive and publish errors", s)
	}
}

func TestPublishCoalesces(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		a, _, _, rb := pair(t, r, nil)
		const n = 50
		ctx := ctxTimeout(t, 5*time.Second)
		start := make(chan struct{})
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				errs <- a.Publish(ctx, fmt.Sprintf("key:%02d", i))
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("Publish: %v", err)
			}
		}

		got := make(map[string]bool)
		for len(got) < n {
			for _, k := range rb.nextEvict(t, 2*time.Second) {
				if got[k] {
					t.Errorf("key %q evicted twice", k)
				}
				got[k] = true
			}
		}
		for i := range n {
			if k := fmt.Sprintf("key:%02d", i); !got[k] {
				t.Errorf("key %q never evicted", k)
			}
		}
		s := a.Stats()
		t.Logf("%d keys in %d messages (%.1f keys per message)", s.SentKeys, s.SentMessages, float64(s.SentKeys)/float64(s.SentMessages))
		if s.SentKeys != n || s.SentMessages >= n {
			t.Errorf("a.Stats() = %+v, want %d keys in fewer than %d messages", s, n, n)
		}
	})
}

func TestPublishDedupes(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		a, _, _, rb := pair(t, r, nil)
		if err := a.Publish(ctxTimeout(t, 5*time.Second), "d", "e", "d", "d", "e"); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		if got, want := rb.nextEvict(t, 2*time.Second), []string{"d", "e"}; !reflect.DeepEqual(got, want) {
			t.Errorf("Evict(%q), want %q", got, want)
		}
		if s := a.Stats(); s.SentMessages != 1 || s.SentKeys != 2 {
			t.Errorf("a.Stats() = %+v, want 2 keys in 1 message", s)
		}
	})
}

func TestPublishInvalidKey(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		const limit = 8
		a, _, _, rb := pair(t, r, func(c *Config) { c.MaxKeyBytes = limit })
		ctx := ctxTimeout(t, 5*time.Second)
		for _, keys := range [][]string{
			{""},
			{strings.Repeat("k", limit+1)},
			{"fine", ""},
			{"fine", strings.Repeat("k", limit+1), "also-ok"},
		} {
			if err := a.Publish(ctx, keys...); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("Publish(%q) = %v, want ErrInvalidKey", keys, err)
			}
		}
		if err := a.Publish(ctx); err != nil {
			t.Errorf("Publish() = %v, want nil", err)
		}
		if s := a.Stats(); s.SentMessages != 0 || s.SentKeys != 0 {
			t.Errorf("a.Stats() = %+v after invalid keys, want nothing sent", s)
		}
		// A key at the limit goes out, and is the first thing b hears.
		atLimit := strings.Repeat("x", limit)
		if err := a.Publish(ctx, atLimit); err != nil {
			t.Fatalf("Publish(%d-byte key): %v", limit, err)
		}
		if got := rb.nextEvict(t, 2*time.Second); !reflect.DeepEqual(got, []string{atLimit}) {
			t.Errorf("b's first Evict(%q), want only %q", got, atLimit)
		}
	})
}

func TestPublishSplitsLargeBatches(t *testing.T) {
	t.Run("MaxKeysPerMessage", func(t *testing.T) {
		a, _, _, rb := pair(t, redistest.Single(t), func(c *Config) { c.MaxKeysPerMessage = 4 })
		var keys []string
		for i := range 10 {
			keys = append(keys, fmt.Sprintf("k%d", i))
		}
		if err := a.Publish(ctxTimeout(t, 5*time.Second), keys...); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		var got []string
		for _, want := range []int{4, 4, 2} {
			ks := rb.nextEvict(t, 2*time.Second)
			if len(ks) != want {
				t.Errorf("Evict(%q), want %d keys", ks, want)
			}
			got = append(got, ks...)
		}
		if !reflect.DeepEqual(got, keys) {
			t.Errorf("evicted %q, want %q", got, keys)
		}
		if s := a.Stats(); s.SentMessages != 3 || s.SentKeys != 10 {
			t.Errorf("a.Stats() = %+v, want 10 keys in 3 messages", s)
		}
		if got := rb.drainFlushes(); len(got) > 0 {
			t.Errorf("Flush(%q), want none: the messages are in sequence", got)
		}
	})

	t.Run("MaxMessageBytes", func(t *testing.T) {
		addr, ch := redistest.Addr(t), newChannel(t)
		// The smallest MaxMessageBytes that New accepts for 100-byte keys.
		const keyBytes, msgBytes = 100, fixedSize + maxInstanceID + 2*100
		raw := newClient(t, addr).Subscribe(context.Background(), ch)
		t.Cleanup(func() { _ = raw.Close() })
		if _, err := raw.Receive(ctxTimeout(t, 2*time.Second)); err != nil {
			t.Fatalf("SUBSCRIBE: %v", err)
		}
		cfg := newRecorder().config(ch)
		cfg.MaxKeyBytes, cfg.MaxMessageBytes = keyBytes, msgBytes
		cfg.InstanceID = strings.Repeat("i", maxInstanceID)
		a := newBus(t, newClient(t, addr), cfg)
		var keys []string
		for i := range 6 {
			keys = append(keys, fmt.Sprintf("%0*d", keyBytes, i))
		}
		if err := a.Publish(ctxTimeout(t, 5*time.Second), keys...); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		var got []string
		for len(got) < len(keys) {
			msg, err := raw.ReceiveTimeout(ctxTimeout(t, 2*time.Second), 2*time.Second)
			if err != nil {
				t.Fatalf("receive: %v (keys so far %d)", err, len(got))
			}
			pm, ok := msg.(*redis.Message)
			if !ok {
				continue
			}
			if len(pm.Payload) > msgBytes {
				t.Errorf("a %d-byte message, over MaxMessageBytes %d", len(pm.Payload), msgBytes)
			}
			m, err := decodeMessage([]byte(pm.Payload), 512, keyBytes)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			got = append(got, m.keys...)
		}
		if !slices.Equal(got, keys) {
			t.Errorf("sent %d keys, want %d in order", len(got), len(keys))
		}
		if s := a.Stats(); s.SentMessages < 2 {
			t.Errorf("a.Stats() = %+v, want the keys split over several messages", s)
		}
	})
}

// TestReceiverFlushes plays a peer by publishing crafted frames with a raw
// client. Each step ends with a keys message, whose Evict shows that every
// frame of the step has been applied.
func TestReceiverFlushes(t *testing.T) {
	addr, ch := redistest.Addr(t), newChannel(t)
	r := newRecorder()
	b := newBus(t, newClient(t, addr), r.config(ch))
	waitFresh(t, b)
	r.drainFlushes()
	raw := newClient(t, addr)
	ctx := ctxTimeout(t, 10*time.Second)

	const peerID = "peer-1"
	steps := []struct {
		name        string
		frames      [][]byte
		wantEvicts  [][]string
		wantFlushes []string
	}{
		{"first message from a peer", [][]byte{encode(keysMsg(peerID, 7, 5, "a"))}, [][]string{{"a"}}, nil},
		{"next in sequence", [][]byte{encode(keysMsg(peerID, 7, 6, "b"))}, [][]string{{"b"}}, nil},
		{"keys after a gap", [][]byte{encode(keysMsg(peerID, 7, 8, "c"))}, [][]string{{"c"}}, []string{"gap"}},
		{"a repeated seq", [][]byte{encode(keysMsg(peerID, 7, 8, "c2"))}, [][]string{{"c2"}}, nil},
		{"heartbeat at the last seq", [][]byte{
			encode(heartbeatMsg(peerID, 7, 8)),
			encode(keysMsg(peerID, 7, 9, "d")),
		}, [][]string{{"d"}}, nil},
		{"heartbeat above the last seq", [][]byte{
			encode(heartbeatMsg(peerID, 7, 11)),
			encode(keysMsg(peerID, 7, 12, "e")),
		}, [][]string{{"e"}}, []string{"gap"}},
		{"keys in a new epoch", [][]byte{encode(keysMsg(peerID, 8, 1, "f"))}, [][]string{{"f"}}, []string{"epoch"}},
		{"heartbeat in a new epoch", [][]byte{
			encode(heartbeatMsg(peerID, 9, 3)),
			encode(keysMsg(peerID, 9, 4, "g")),
		}, [][]string{{"g"}}, []string{"epoch"}},
		{"another peer", [][]byte{
			encode(heartbeatMsg("peer-2", 1, 40)),
			encode(keysMsg("peer-2", 1, 41, "h")),
			encode(keysMsg(peerID, 9, 5, "i")),
		}, [][]string{{"h"}, {"i"}}, nil},
		{"garbage", [][]byte{
			[]byte("SET user:1 not-a-frame"),
			encode(keysMsg(peerID, 9, 6, "j")),
		}, [][]string{{"j"}}, []string{"malformed"}},
		{"keys under our own instance id and epoch", [][]byte{
			encode(keysMsg(b.InstanceID(), b.epoch, 1, "own")),
			encode(keysMsg(peerID, 9, 7, "k")),
		}, [][]string{{"k"}}, nil},
		// Another process given the same fixed InstanceID: its keys apply.
		{"keys under our instance id from another epoch", [][]byte{
			encode(keysMsg(b.InstanceID(), b.epoch+1, 1, "twin")),
		}, [][]string{{"twin"}}, nil},
	}
	for _, st := range steps {
		for _, f := range st.frames {
			if err := raw.Publish(ctx, ch, f).Err(); err != nil {
				t.Fatalf("%s: PUBLISH: %v", st.name, err)
			}
		}
		for _, want := range st.wantEvicts {
			if got := r.nextEvict(t, 2*time.Second); !reflect.DeepEqual(got, want) {
				t.Errorf("%s: Evict(%q), want %q", st.name, got, want)
			}
		}
		if got := r.drainFlushes(); !slices.Equal(got, st.wantFlushes) {
			t.Errorf("%s: Flush(%q), want %q", st.name, got, st.wantFlushes)
		}
	}
	if s := b.Stats(); s.Malformed != 1 || s.ReceivedKeys != 13 {
		t.Errorf("Stats() = %+v, want 1 malformed and 13 keys received", s)
	}
}

func TestResubscribeFlushes(t *testing.T) {
	srv := redistest.Start(t)
	ch := newChannel(t)
	r := newRecorder()
	b := newBus(t, newClient(t, srv.Addr), r.config(ch))
	waitFresh(t, b)
	r.drainFlushes()

	n, err := newClient(t, srv.Addr).ClientKillByFilter(ctxTimeout(t, time.Second), "TYPE", "pubsub").Result()
	if err != nil || n != 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v; want the bus's connection killed", n, err)
	}
	r.waitFlush(t, "resubscribe", 2*time.Second)

	other := newBus(t, newClient(t, srv.Addr), newRecorder().config(ch))
	if err := other.Publish(ctxTimeout(t, 2*time.Second), "after"); err != nil {
		t.Fatalf("Publish after resubscription: %v", err)
	}
	if got := r.nextEvict(t, 2*time.Second); !reflect.DeepEqual(got, []string{"after"}) {
		t.Errorf("Evict(%q) after resubscription, want [after]", got)
	}
	eventually(t, 2*time.Second, "Fresh again after resubscription", b.Fresh)
	if s := b.Stats(); s.ReceiveErrors < 1 || s.Flushes < 2 {
		t.Errorf("Stats() = %+v, want a receive error and the resubscribe flush counted", s)
	}
}

// staleBus returns a fresh bus with a 200ms bound (so a 50ms heartbeat)
// and a 40ms PublishTimeout on a private Redis.
//
// NOTE: the PublishTimeout is under the heartbeat on purpose. While Redis
// is down every heartbeat fails after a whole PublishTimeout; with the
// default 100ms the next tick is always due by then, and Publish, queued
// behind them on the one sending goroutine, waits a random number of them
// (measured: 67-606ms).
func staleBus(t *testing.T) (*redistest.Server, *Bus, *recorder) {
	t.Helper()
	srv := redistest.Start(t)
	r := newRecorder()
	cfg := r.config(newChannel(t))
	cfg.StalenessBound, cfg.PublishTimeout = 200*time.Millisecond, 40*time.Millisecond
	b := newBus(t, newClient(t, srv.Addr), cfg)
	waitFresh(t, b)
	r.drainFlushes()
	return srv, b, r
}

// TestStaleWhenRedisHangs covers the watchdog: Redis keeps the connections
// but answers nothing that writes, so the bus's own heartbeats stop coming
// back and nothing but the bound says so.
func TestStaleWhenRedisHangs(t *testing.T) {
	srv, b, r := staleBus(t)
	const pause = 500 * time.Millisecond
	paused := time.Now()
	err := newClient(t, srv.Addr).Do(ctxTimeout(t, time.Second), "CLIENT", "PAUSE", pause.Milliseconds(), "WRITE").Err()
	if err != nil {
		t.Fatalf("CLIENT PAUSE: %v", err)
	}
	// Fresh turns false at most a bound after the last heartbeat heard,
	// which was before the pause; the rest is slack for the test machine.
	took := eventually(t, b.StalenessBound()+100*time.Millisecond, "Fresh false while Redis hangs", func() bool { return !b.Fresh() })
	t.Logf("not fresh %v after Redis paused", took)
	// Fresh reads the clock, so it turns false before anything counts the
	// spell: the watchdog does a tick later, or the subscription's own
	// timeout, or else the heartbeat that ends the spell.
	eventually(t, pause+5*time.Second, "no stale spell counted", func() bool { return b.Stats().StaleSpells >= 1 })

	r.waitFlush(t, "fresh", pause+5*time.Second)
	eventually(t, time.Second, "Fresh after the pause", b.Fresh)
	t.Logf("fresh again %v after Redis paused for %v", time.Since(paused), pause)
}

func TestStaleWhenRedisDies(t *testing.T) {
	srv, b, r := staleBus(t)
	stopped := time.Now()
	srv.Stop()
	took := eventually(t, b.StalenessBound()+100*time.Millisecond, "Fresh false after Redis stopped", func() bool { return !b.Fresh() })
	t.Logf("not fresh %v after Redis stopped", took)
	// The subscription's EOF turns Fresh off and counts a stale spell,
	// unless the clock ran past the bound first (a slow machine).
	eventually(t, 5*time.Second, "no receive error and stale spell counted", func() bool {
		s := b.Stats()
		return !s.Fresh && s.ReceiveErrors >= 1 && s.StaleSpells >= 1
	})

	start := time.Now()
	err := b.Publish(ctxTimeout(t, 5*time.Second), "while-down")
	took = time.Since(start)
	t.Logf("Publish with Redis down: %v after %v (%v after the stop)", err, took, time.Since(stopped))
	if err == nil {
		t.Error("Publish with Redis down = nil, want an error")
	}
	if took >= 200*time.Millisecond {
		t.Errorf("Publish with Redis down took %v, want under 200ms", took)
	}
	if s := b.Stats(); s.PublishErrors < 1 || s.SentMessages != 0 {
		t.Errorf("Stats() = %+v, want a publish error and nothing sent", s)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	// The flush comes before Fresh turns true, so that nothing missed
	// while down is trusted again.
	r.waitFlush(t, "fresh", 5*time.Second)
	eventually(t, time.Second, "Fresh after Redis restarted", b.Fresh)
	t.Logf("fresh %v after Redis restarted", time.Since(restarted))
	if err := b.Publish(ctxTimeout(t, time.Second), "after"); err != nil {
		t.Errorf("Publish after recovery: %v", err)
	}
}

func TestNewConfigErrors(t *testing.T) {
	rdb := newClient(t, "127.0.0.1:1") // New fails before it dials
	valid := newRecorder().config("tiercache:inv:config")
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no Channel", func(c *Config) { c.Channel = "" }, "Channel is required"},
		{"no Evict", func(c *Config) { c.Evict = nil }, "Evict and Flush are required"},
		{"no Flush", func(c *Config) { c.Flush = nil }, "Evict and Flush are required"},
		{"Heartbeat at half the bound", func(c *Config) { c.StalenessBound, c.Heartbeat = time.Second, 500*time.Millisecond }, "Heartbeat"},
		{"Heartbeat over the bound", func(c *Config) { c.Heartbeat = 3 * time.Second }, "Heartbeat"},
		{"negative StalenessBound", func(c *Config) { c.StalenessBound = -time.Second }, "negative"},
		{"negative Heartbeat", func(c *Config) { c.Heartbeat = -time.Millisecond }, "Heartbeat"},
		{"negative Window", func(c *Config) { c.Window = -time.Millisecond }, "negative"},
		{"negative PublishTimeout", func(c *Config) { c.PublishTimeout = -time.Millisecond }, "negative"},
		{"negative MaxKeyBytes", func(c *Config) { c.MaxKeyBytes = -1 }, "MaxKeyBytes"},
		{"negative MaxKeysPerMessage", func(c *Config) { c.MaxKeysPerMessage = -1 }, "MaxKeysPerMessage"},
		{"MaxMessageBytes too small", func(c *Config) { c.MaxMessageBytes = 100 }, "MaxMessageBytes"},
		{"InstanceID too long", func(c *Config) { c.InstanceID = strings.Repeat("i", maxInstanceID+1) }, "InstanceID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid
			tt.edit(&cfg)
			b, err := New(rdb, cfg)
			if err == nil {
				_ = b.Close()
				t.Fatalf("New(%s) = nil error", tt.name)
			}
			if !strings.HasPrefix(err.Error(), "invalidation: bad Config") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%s) error = %v, want a bad Config error about %q", tt.name, err, tt.want)
			}
		})
	}

	t.Run("nil client", func(t *testing.T) {
		if b, err := New(nil, valid); err == nil {
			_ = b.Close()
			t.Error("New(nil, cfg) = nil error")
		}
	})
}

func TestCloseStopsEverything(t *testing.T) {
	addr := redistest.Addr(t)
	ignore := goleak.IgnoreCurrent()
	// Cleanups run last first: the client closes, then the check runs.
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	r := newRecorder()
	b, err := New(newClient(t, addr), r.config(newChannel(t)))
	if err != nil {
		t.Fatal(err)
	}
	waitFresh(t, b)
	ctx := ctxTimeout(t, 2*time.Second)
	if err := b.Publish(ctx, "k"); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	for i := range 2 {
		if err := b.Close(); err != nil {
			t.Errorf("Close #%d = %v", i+1, err)
		}
	}
	if err := b.Publish(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
	if b.Fresh() || b.WaitFresh(ctx) {
		t.Error("fresh after Close")
	}
}

// TestLatePeerPastItsFirstMessageFlushes: a publisher first heard from
// long after subscribing (every publisher sends a heartbeat each
// Heartbeat), already past its first message, has published something this
// bus never got, such as a publish that failed: that is a gap. A new
// publisher at its first message is not.
func TestLatePeerPastItsFirstMessageFlushes(t *testing.T) {
	addr, ch := redistest.Addr(t), newChannel(t)
	r := newRecorder()
	cfg := r.config(ch)
	cfg.StalenessBound = 200 * time.Millisecond // heartbeats every 50 ms
	b := newBus(t, newClient(t, addr), cfg)
	waitFresh(t, b)
	time.Sleep(200 * time.Millisecond) // more than three heartbeats since subscribing
	r.drainFlushes()
	raw := newClient(t, addr)
	ctx := ctxTimeout(t, 5*time.Second)
	for _, st := range []struct {
		frame []byte
		key   string
		flush []string
	}{
		{encode(keysMsg("new-peer", 1, 1, "a")), "a", nil},
		{encode(keysMsg("late-peer", 1, 4, "b")), "b", []string{"gap"}},
	} {
		if err := raw.Publish(ctx, ch, st.frame).Err(); err != nil {
			t.Fatal(err)
		}
		if got := r.nextEvict(t, 2*time.Second); !slices.Equal(got, []string{st.key}) {
			t.Errorf("Evict(%q), want [%s]", got, st.key)
		}
		if got := r.drainFlushes(); !slices.Equal(got, st.flush) {
			t.Errorf("after %s's first message: Flush(%q), want %q", st.key, got, st.flush)
		}
	}
}

// TestPublishTagsReachEvictTags: a tags message reaches EvictTags, and a
// bus without EvictTags, which cannot tell which copies carry the tags,
// flushes instead.
func TestPublishTagsReachEvictTags(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ch := newChannel(t)
		ra, rb, rc := newRecorder(), newRecorder(), newRecorder()
		tags := make(chan []string, 16)
		bc := rb.config(ch)
		bc.EvictTags = func(t []string) { tags <- slices.Clone(t) }
		a := newBus(t, r.Client(t), ra.config(ch))
		b := newBus(t, r.Client(t), bc)
		c := newBus(t, r.Client(t), rc.config(ch))
		for _, x := range []*Bus{a, b, c} {
			waitFresh(t, x)
		}
		rc.drainFlushes()
		ctx := ctxTimeout(t, 5*time.Second)
		if err := a.PublishTags(ctx, "category:7", "url:/p/1"); err != nil {
			t.Fatalf("PublishTags: %v", err)
		}
		select {
		case got := <-tags:
			if want := []string{"category:7", "url:/p/1"}; !reflect.DeepEqual(got, want) {
				t.Errorf("EvictTags(%q), want %q", got, want)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("no EvictTags within 2s")
		}
		rc.waitFlush(t, "tags", 2*time.Second)
		// Keys and tags share one sequence: a keys message after the tags
		// message is no gap.
		if err := a.Publish(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if got := rb.nextEvict(t, 2*time.Second); !reflect.DeepEqual(got, []string{"k"}) {
			t.Errorf("Evict(%q), want [k]", got)
		}
		if got := rb.drainFlushes(); len(got) > 0 {
			t.Errorf("b flushed %q, want no flush", got)
		}
		if s := a.Stats(); s.SentTags != 2 || s.SentKeys != 1 {
			t.Errorf("a.Stats() = %+v, want 2 tags and 1 key sent", s)
		}
		if s := b.Stats(); s.ReceivedTags != 2 {
			t.Errorf("b.Stats() = %+v, want 2 tags received", s)
		}
	})
}

// TestGivenUpPublishShowsAGap: a publish whose context ends before the bus
// could even queue it (Redis stalls, the queue is full) is not sent, but it
// uses its sequence number: the other process sees the gap and flushes, so
// a write whose caller gave up cannot leave a stale copy behind unseen.
func TestGivenUpPublishShowsAGap(t *testing.T) {
	addr, ch := redistest.Addr(t), newChannel(t)
	p := faultproxy.Start(t, addr)
	ra, rb := newRecorder(), newRecorder()
	ac := ra.config(ch)
	ac.PublishTimeout = 10 * time.Second // the stall holds the publish in flight
	a := newBus(t, redis.NewClient(&redis.Options{Addr: p.Addr(), ContextTimeoutEnabled: true, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}), ac)
	b := newBus(t, newClient(t, addr), rb.config(ch))
	waitFresh(t, a)
	waitFresh(t, b)
	// b must know a's sequence before the gap: a publisher first heard
	// from soon after subscribing starts where it is.
	if err := a.Publish(ctxTimeout(t, 5*time.Second), "hello"); err != nil {
		t.Fatal(err)
	}
	rb.nextEvict(t, 5*time.Second)
	rb.drainFlushes()

	p.Stall()
	// Fill the queue behind a publish that the stall holds in flight, by
	// hand: send takes what is queued when it starts a message, so the
	// queue is full only once it is stuck on one.
	req := func(k string) publishReq {
		return publishReq{kind: kindKeys, names: []string{k}, done: make(chan error, 1)}
	}
	a.reqs <- req("first")
	given, cancel := context.WithCancel(context.Background())
	cancel()
	// The queue seen full may still have room a moment later, if send was
	// draining it when the stall came: the publish is then queued, not
	// confirmed, and fills the queue again. So try until send is stuck.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; {
		for ; len(a.reqs) < cap(a.reqs); i++ {
			select {
			case a.reqs <- req(fmt.Sprint("k", i)):
			default:
			}
		}
		err := a.Publish(given, "lost")
		if err != nil && strings.Contains(err.Error(), "not sent") {
			break
		}
		if err == nil || !strings.Contains(err.Error(), "not confirmed") || time.Now().After(deadline) {
			t.Fatalf("Publish with a full queue and a done context = %v, want it not sent", err)
		}
	}
	p.Pass()
	rb.waitFlush(t, "gap", 5*time.Second)
}

// TestBusFollowsItsChannelsSlot: a manual failover (CLUSTER FAILOVER on the
// replica, as for maintenance) demotes the master that holds the channel's
// slot, and Redis unsubscribes its subscribers (SUNSUBSCRIBE). Both buses
// subscribe again on the new master, count it as a gap (a flush), and are
// fresh again well within the bound; a publish then reaches the other bus.
// Without the SUNSUBSCRIBE handling, a bus would learn only from a whole
// bound's silence.
func TestBusFollowsItsChannelsSlot(t *testing.T) {
	if testing.Short() {
		t.Skip("a cluster of its own")
	}
	cl := redistest.StartCluster(t)
	r := cl.Target()
	ch := newChannel(t)
	const bound = 4 * time.Second
	ra, rb := newRecorder(), newRecorder()
	ac, bc := ra.config(ch), rb.config(ch)
	ac.StalenessBound, bc.StalenessBound = bound, bound
	a := newBus(t, r.Client(t), ac)
	b := newBus(t, r.Client(t), bc)
	waitFresh(t, a)
	waitFresh(t, b)
	ctx := ctxTimeout(t, 30*time.Second)
	master, err := cl.MasterOf(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	heir, err := cl.ReplicaOf(ctx, master)
	if err != nil {
		t.Fatal(err)
	}
	hc := newClient(t, heir.Addr)
	if err := hc.Do(ctx, "CLUSTER", "FAILOVER").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, 20*time.Second, "the replica takes the slot over", func() bool {
		m, err := cl.MasterOf(ctx, ch)
		return err == nil && m == heir
	})
	promoted := time.Since(start)
	rb.waitFlush(t, "resubscribe", 10*time.Second)
	eventually(t, 10*time.Second, "b fresh again", b.Fresh)
	back := time.Since(start)
	// Publishes reach b again (one may be lost while the cluster settles,
	// which b sees as a gap).
	reached := false
	for i := 0; !reached && time.Since(start) < 10*time.Second; i++ {
		key := fmt.Sprintf("after-%d", i)
		if err := a.Publish(ctx, key); err != nil {
			continue
		}
		deadline := time.After(500 * time.Millisecond)
	wait:
		for !reached {
			select {
			case keys := <-rb.evicts:
				reached = slices.Contains(keys, key)
			case <-deadline:
				break wait
			}
		}
	}
	if !reached {
		t.Errorf("a's publishes did not reach b within 10 s of the failover; b: %+v", b.Stats())
	}
	t.Logf("slot moved %v after CLUSTER FAILOVER; b resubscribed and fresh %v after it; b: %+v; flushes %q", promoted, back, b.Stats(), rb.drainFlushes())
	if back > 3*bound/4 {
		t.Errorf("b fresh again %v after the failover, want well within the %v bound", back, bound)
	}
}
