package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestMain(m *testing.M) {
	// redistest.Main would also stop a shared server, but these tests only
	// start private ones, which their own cleanups stop.
	goleak.VerifyTestMain(m)
}

// wait bounds every wait for a condition; it is generous so that a loaded
// machine only slows the tests down.
const wait = 10 * time.Second

// eventually polls cond until it holds, or ends t after wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, wait)
		}
		<-tick.C
	}
}

// held returns how many chunks p has read and not yet delivered.
func held(p *Proxy) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		for _, q := range []*queue{&c.up, &c.down} {
			q.mu.Lock()
			n += len(q.chunks)
			q.mu.Unlock()
		}
	}
	return n
}

// target is an in-process server on 127.0.0.1 for the proxy to forward to.
type target struct {
	addr string
	// accepted receives each connection when the target does not echo,
	// for the test to drive.
	accepted chan net.Conn
	// got receives what each connection read when the target echoes.
	got chan []byte
}

// startTarget starts a target that echoes what it reads, if echo, or else
// hands its connections to the test. It closes them when t ends.
func startTarget(t *testing.T, echo bool) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{addr: ln.Addr().String(), accepted: make(chan net.Conn, 16), got: make(chan []byte, 1024)}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // protects conns
		conns []net.Conn
	)
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			if !echo {
				tg.accepted <- c
				continue
			}
			wg.Go(func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
						tg.got <- append([]byte(nil), buf[:n]...)
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	return tg
}

// accept returns the target's next connection.
func (tg *target) accept(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-tg.accepted:
		return c
	case <-time.After(wait):
		t.Fatalf("target accepted no connection within %v", wait)
		return nil
	}
}

// dial connects to addr; the connection is closed when t ends.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func write(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// read reads exactly n bytes from c.
func read(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// readFails reads from c, which must fail before wait for another reason
// than a timeout (EOF, reset).
func readFails(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("Read = %d, %v; want the connection closed", n, err)
	}
}

func TestForwards(t *testing.T) {
	tests := []struct {
		name string
		size int
	}{
		{"byte", 1},
		{"more than a read", 32<<10 + 1},
		{"megabyte", 1 << 20},
	}
	p := Start(t, startTarget(t, true).addr)
	c := dial(t, p.Addr())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := bytes.Repeat([]byte("0123456789abcdef"), tt.size/16+1)[:tt.size]
			// Write concurrently: the echo comes back while we send.
			errc := make(chan error, 1)
			go func() { _, err := c.Write(msg); errc <- err }()
			if got := read(t, c, len(msg)); !bytes.Equal(got, msg) {
				t.Errorf("echo of %d bytes differs", len(msg))
			}
			if err := <-errc; err != nil {
				t.Errorf("write: %v", err)
			}
		})
	}
	if got := p.Conns(); got != 1 {
		t.Errorf("Conns() = %d, want 1", got)
	}
	_ = c.Close()
	eventually(t, "Conns() = 0 after the client closed", func() bool { return p.Conns() == 0 })
}

func TestStall(t *testing.T) {
	tests := []struct {
		name  string
		reply bool // the server writes, rather than the client
		late  bool // the connection opens while stalled
	}{
		{"request", false, false},
		{"reply", true, false},
		{"request on a connection opened while stalled", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := startTarget(t, false)
			p := Start(t, tg.addr)
			if tt.late {
				p.Stall()
			}
			client := dial(t, p.Addr())
			server := tg.accept(t)
			p.Stall()
			from, to := client, server
			if tt.reply {
				from, to = server, client
			}

			write(t, from, []byte("a"))
			eventually(t, "stalled proxy holds the first byte", func() bool { return held(p) > 0 })
			write(t, from, []byte("bc"))
			_ = to.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			if n, err := to.Read(make([]byte, 1)); n > 0 {
				t.Errorf("Read while stalled = %d bytes, %v; want none", n, err)
			}
			p.Pass()
			if got := read(t, to, 3); string(got) != "abc" {
				t.Errorf("read after Pass = %q, want %q", got, "abc")
			}
		})
	}
}

func TestStallClientHangsUp(t *testing.T) {
	tg := startTarget(t, false)
	p := Start(t, tg.addr)
	ignore := goleak.IgnoreCurrent()
	client := dial(t, p.Addr())
	server := tg.accept(t)
	p.Stall()
	write(t, client, []byte("held"))
	eventually(t, "stalled proxy holds the request", func() bool { return held(p) > 0 })

	_ = client.Close()
	eventually(t, "Conns() = 0 after the client hung up", func() bool { return p.Conns() == 0 })
	readFails(t, server)
	goleak.VerifyNone(t, ignore)
}

func TestCut(t *testing.T) {
	p := Start(t, startTarget(t, true).addr)
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	for _, c := range []net.Conn{a, b} {
		write(t, c, []byte("x"))
		read(t, c, 1)
	}
	p.Cut()
	readFails(t, a)
	readFails(t, b)
	if got := p.Conns(); got != 0 {
		t.Errorf("Conns() after Cut = %d, want 0", got)
	}
	c := dial(t, p.Addr())
	write(t, c, []byte("y"))
	if got := read(t, c, 1); string(got) != "y" {
		t.Errorf("echo after Cut = %q, want %q", got, "y")
	}
}

func TestRefuse(t *testing.T) {
	tests := []struct {
		name   string
		resume func(*Proxy)
	}{
		{"Pass", (*Proxy).Pass},
		{"Stall", (*Proxy).Stall}, // listens again, then holds
	}
	p := Start(t, startTarget(t, true).addr)
	addr := p.Addr()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			open := dial(t, addr)
			p.Refuse()
			readFails(t, open)
			if got := p.Conns(); got != 0 {
				t.Errorf("Conns() after Refuse = %d, want 0", got)
			}
			if c, err := net.Dial("tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
				if c != nil {
					_ = c.Close()
				}
				t.Errorf("Dial(%s) after Refuse = %v, want ECONNREFUSED", addr, err)
			}

			tt.resume(p)
			if got := p.Addr(); got != addr {
				t.Errorf("Addr() = %s after %s, want %s", got, tt.name, addr)
			}
			c := dial(t, addr)
			write(t, c, []byte("z"))
			p.Pass()
			if got := read(t, c, 1); string(got) != "z" {
				t.Errorf("echo after %s = %q, want %q", tt.name, got, "z")
			}
		})
	}
}

func TestDelay(t *testing.T) {
	tests := []time.Duration{0, 10 * time.Millisecond, 100 * time.Millisecond}
	p := Start(t, startTarget(t, true).addr)
	c := dial(t, p.Addr())
	for _, d := range tests {
		t.Run(d.String(), func(t *testing.T) {
			p.Delay(d)
			start := time.Now()
			write(t, c, []byte("ping"))
			read(t, c, 4)
			// Only a lower bound: a loaded machine may add any latency.
			if got := time.Since(start); got < d {
				t.Errorf("round trip under Delay(%v) took %v, want >= %v", d, got, d)
			}
		})
	}
}

// TestDelayReplies: only the reply to every second request that matches
// is late.
func TestDelayReplies(t *testing.T) {
	p := Start(t, startTarget(t, true).addr)
	c := dial(t, p.Addr())
	const d = 500 * time.Millisecond
	p.DelayReplies([]byte("slow"), 2, d)
	for _, tt := range []struct {
		msg  string
		late bool
	}{{"slow1", false}, {"fast1", false}, {"slow2", true}, {"fast2", false}, {"slow3", false}, {"slow4", true}} {
		start := time.Now()
		write(t, c, []byte(tt.msg))
		if got := string(read(t, c, len(tt.msg))); got != tt.msg {
			t.Fatalf("read %q, want %q", got, tt.msg)
		}
		// Only a lower bound for the late ones; the others must not be
		// held d, which a loaded machine cannot add by itself.
		if took := time.Since(start); tt.late != (took >= d) {
			t.Errorf("%s took %v; late %v, want late %v", tt.msg, took, took >= d, tt.late)
		}
	}
	p.DelayReplies(nil, 0, 0)
	start := time.Now()
	write(t, c, []byte("slow5"))
	read(t, c, 5)
	if took := time.Since(start); took >= d {
		t.Errorf("after DelayReplies(nil): took %v", took)
	}
}

func TestDelayLeavesRequests(t *testing.T) {
	tg := startTarget(t, true)
	p := Start(t, tg.addr)
	c := dial(t, p.Addr())
	p.Delay(time.Hour)
	write(t, c, []byte("set"))
	select {
	case got := <-tg.got:
		if string(got) != "set" {
			t.Errorf("target got %q, want %q", got, "set")
		}
	case <-time.After(wait):
		t.Fatalf("request not forwarded within %v under Delay(1h)", wait)
	}
	// The reply waits its hour; the cleanup must still end its writer.
	eventually(t, "proxy holds the delayed reply", func() bool { return held(p) > 0 })
}

func TestDelayChangeKeepsOrder(t *testing.T) {
	const d = 200 * time.Millisecond
	tg := startTarget(t, false)
	p := Start(t, tg.addr)
	client := dial(t, p.Addr())
	server := tg.accept(t)

	p.Delay(d)
	start := time.Now()
	write(t, server, []byte("a"))
	eventually(t, "proxy holds the delayed reply", func() bool { return held(p) > 0 })
	p.Delay(0) // b is due at once, but must not overtake a
	write(t, server, []byte("b"))
	if got := read(t, client, 2); string(got) != "ab" {
		t.Errorf("read = %q, want %q", got, "ab")
	}
	if got := time.Since(start); got < d {
		t.Errorf("a arrived after %v, want >= %v", got, d)
	}
}

func TestStartRejectsRemoteTargets(t *testing.T) {
	for _, target := range []string{"10.0.0.1:6379", "example.com:6379", "6379"} {
		ft := &fatalTB{TB: t}
		done := make(chan struct{})
		go func() { defer close(done); Start(ft, target) }()
		<-done
		if !ft.failed {
			t.Errorf("Start(%q) did not fail", target)
		}
	}
}

// fatalTB records Fatalf instead of ending the test.
type fatalTB struct {
	testing.TB
	failed bool
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(string, ...any) {
	f.failed = true
	runtime.Goexit()
}

// TestRedis shows what go-redis sees under each fault, against a real
// redis-server.
func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	p := Start(t, srv.Addr)
	opts := &redis.Options{
		Addr:        p.Addr(),
		ReadTimeout: 100 * time.Millisecond,
		MaxRetries:  -1, // show each fault, not the retry that hides it
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	ping := func(what string) {
		t.Helper()
		if err := rdb.Ping(ctx).Err(); err != nil {
			t.Fatalf("Ping %s: %v", what, err)
		}
	}
	ping("through the proxy")

	p.Refuse()
	if err := rdb.Ping(ctx).Err(); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Ping under Refuse = %v, want ECONNREFUSED", err)
	}
	p.Pass()
	ping("after Refuse and Pass")

	p.Stall()
	var ne net.Error
	if err := rdb.Ping(ctx).Err(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("Ping under Stall = %v, want a timeout", err)
	}
	p.Pass()
	ping("after Stall and Pass")

	const d = 300 * time.Millisecond // > ReadTimeout
	p.Delay(d)
	slow := redis.NewClient(&redis.Options{Addr: p.Addr(), ReadTimeout: wait, MaxRetries: -1})
	t.Cleanup(func() { _ = slow.Close() })
	start := time.Now()
	if err := slow.Ping(ctx).Err(); err != nil {
		t.Errorf("Ping under Delay(%v) with a %v ReadTimeout: %v", d, wait, err)
	}
	if got := time.Since(start); got < d {
		t.Errorf("Ping under Delay(%v) took %v, want >= %v", d, got, d)
	}
	// A timeout under Delay does not mean the command failed.
	key := "faultproxy:" + t.Name()
	if err := rdb.Set(ctx, key, "v", 0).Err(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("Set under Delay(%v) with a 100ms ReadTimeout = %v, want a timeout", d, err)
	}
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = direct.Close() })
	eventually(t, "the timed-out Set is in Redis", func() bool {
		return direct.Get(ctx, key).Val() == "v"
	})
	p.Pass()
	ping("after Delay and Pass")
}
