// Package faultproxy provides a loopback TCP proxy that injects network
// faults between a client and a server in tests.
//
// A [Proxy] listens on a free 127.0.0.1 port and forwards each accepted
// connection to its target. It is in one of three modes: passing (forward at
// once), stalled (accept and read, forward nothing) or refusing (no listener,
// so the kernel refuses dials). [Proxy.Delay] adds latency to replies in any
// mode. Modes act on open connections too, not only on new ones.
//
// Each direction of a connection is a reader goroutine that queues what it
// reads and a writer goroutine that delivers the queue in order, so a stall
// holds bytes rather than dropping them and a delay never reorders them.
//
// A Proxy is safe for concurrent use.
//
//	srv := redistest.Start(t)
//	p := faultproxy.Start(t, srv.Addr)
//	rdb := redis.NewClient(&redis.Options{Addr: p.Addr()})
//	p.Stall() // Redis seems frozen
//	p.Pass()  // and is back, with the held requests delivered
package faultproxy

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type mode int

const (
	passing mode = iota
	stalled
	refusing
)

// Proxy is a fault-injecting TCP proxy owned by one test.
type Proxy struct {
	tb     testing.TB
	target string
	addr   string // fixed at Start: Pass listens on it again after Refuse

	mu      sync.Mutex // protects the fields below
	mode    mode
	delay   time.Duration
	match   []byte // DelayReplies: requests whose reply to delay
	every   int
	matched int
	late    time.Duration
	ln      net.Listener // nil while refusing and once closed
	conns   map[*conn]struct{}
	changed chan struct{} // closed and replaced when mode changes, waking stalled writers
	closed  bool

	wg sync.WaitGroup // accept loops and connections
}

// Start listens on a free 127.0.0.1 port and forwards every accepted
// connection to target, which must be a loopback address. The proxy is
// closed, with all its connections and goroutines, when tb ends.
func Start(tb testing.TB, target string) *Proxy {
	tb.Helper()
	host, _, err := net.SplitHostPort(target)
	if ip := net.ParseIP(host); err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
		tb.Fatalf("faultproxy: target %q is not a loopback host:port", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("faultproxy: %v", err)
	}
	p := &Proxy{
		tb: tb, target: target, addr: ln.Addr().String(),
		conns: make(map[*conn]struct{}), changed: make(chan struct{}),
	}
	p.serveLocked(ln) // p is not shared yet
	tb.Cleanup(p.close)
	return p
}

// Addr returns the address the proxy listens on; it does not change across
// Refuse and Pass.
func (p *Proxy) Addr() string { return p.addr }

// Pass restores normal forwarding: it listens again after Refuse, releases
// the bytes held by Stall in order and sets the delay to zero. Chunks
// already delayed keep their delivery time.
//
// NOTE: after Refuse, Pass ends the test if the port cannot be bound again
// within a few seconds, so call it from the test's goroutine then.
func (p *Proxy) Pass() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = 0
	p.setModeLocked(passing)
}

// Stall keeps connections open and accepts new ones, but forwards no byte in
// either direction until Pass. Bytes read meanwhile are held, not dropped.
// A write already under way when Stall is called completes; anything the
// proxy reads after Stall returns is held.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setModeLocked(stalled)
}

// Refuse closes the listener, so that dials fail with ECONNREFUSED, and cuts
// every open connection, as a crashed server would.
func (p *Proxy) Refuse() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setModeLocked(refusing)
}

// Delay makes every chunk read from the server after the call reach the
// client d later; the server has already executed the request by then.
// Requests are not delayed and byte order is kept. Delay(0) removes the
// delay for chunks read from then on.
func (p *Proxy) Delay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// DelayReplies delays by d the reply to every n-th request (1: each) that
// contains match, on whichever connection it comes: "XREADGROUP", say, to
// lose the replies of some reads and not of the commands around them. A
// request is one chunk read from the client, and its reply the next chunk
// from the server, which holds for a client that waits for each reply
// (a pipeline is one request). A nil match ends it.
func (p *Proxy) DelayReplies(match []byte, n int, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.match, p.every, p.matched, p.late = bytes.Clone(match), max(n, 1), 0, d
}

// Cut closes every open connection, both sides, at once. The proxy keeps
// accepting new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutLocked()
}

// Conns returns the number of open proxied connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

func (p *Proxy) setModeLocked(m mode) {
	if p.closed {
		return
	}
	p.mode = m
	close(p.changed)
	p.changed = make(chan struct{})
	switch {
	case m == refusing && p.ln != nil:
		_ = p.ln.Close()
		p.ln = nil
		p.cutLocked()
	case m != refusing && p.ln == nil:
		p.serveLocked(p.listen())
	}
}

// listen binds p.addr again. Go sets SO_REUSEADDR, so the closed listener's
// TIME_WAIT connections do not block it, but a dial elsewhere on the machine
// may briefly take the port as its ephemeral one: retry for a while.
func (p *Proxy) listen() net.Listener {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", p.addr)
		if err == nil {
			return ln
		}
		if time.Now().After(deadline) {
			p.tb.Fatalf("faultproxy: listen again on %s: %v", p.addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *Proxy) serveLocked(ln net.Listener) {
	p.ln = ln
	p.wg.Go(func() {
		for {
			client, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				p.wg.Go(func() { p.serve(ln, client) })
			}
		}
	})
}

func (p *Proxy) cutLocked() {
	for c := range p.conns {
		c.closeLocked()
	}
}

func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	p.cutLocked()
	p.mu.Unlock()
	p.wg.Wait()
}

// serve proxies one connection accepted on ln.
func (p *Proxy) serve(ln net.Listener, client net.Conn) {
	// Register before dialing, so that a Cut or Refuse during the dial
	// closes this connection too; one accepted by a listener that Refuse
	// has closed since is closed at once.
	c := &conn{p: p, client: client, done: make(chan struct{})}
	p.mu.Lock()
	if p.ln != ln {
		p.mu.Unlock()
		_ = client.Close()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()

	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil || c.closed {
		if err == nil {
			_ = server.Close()
		}
		c.closeLocked()
		return
	}
	c.server = server
	// The client hanging up ends the connection at once, dropping what is
	// held for either side: nobody is left to read the replies, and a
	// stalled connection must not outlive its client. The server hanging
	// up is delivered in order, after the replies before it.
	p.wg.Go(func() { c.read(client, &c.up, false); c.close() })
	p.wg.Go(func() { c.write(server, &c.up) })
	p.wg.Go(func() { c.read(server, &c.down, true); c.down.push(chunk{at: c.deadline()}) })
	p.wg.Go(func() { c.write(client, &c.down) })
}

// deadline returns when a reply read now on c is to be delivered.
func (c *conn) deadline() time.Time {
	d := time.Duration(c.late.Swap(0))
	c.p.mu.Lock()
	d = max(d, c.p.delay)
	c.p.mu.Unlock()
	if d <= 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}

// request notes a request read from the client, which DelayReplies may
// pick for a late reply.
func (c *conn) request(b []byte) {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	if c.p.match == nil || !bytes.Contains(b, c.p.match) {
		return
	}
	if c.p.matched++; c.p.matched%c.p.every == 0 {
		c.late.Store(int64(c.p.late))
	}
}

// conn is one proxied connection: a client and the server dialed for it.
type conn struct {
	p      *Proxy
	client net.Conn
	done   chan struct{} // closed when the connection is
	up     queue         // client to server
	down   queue         // server to client
	late   atomic.Int64  // the delay of the next reply, from DelayReplies

	// Guarded by p.mu.
	server net.Conn // nil until dialed
	closed bool
}

func (c *conn) close() {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	c.closeLocked()
}

func (c *conn) closeLocked() {
	if c.closed {
		return
	}
	c.closed = true
	close(c.done)
	_ = c.client.Close()
	if c.server != nil {
		_ = c.server.Close()
	}
	delete(c.p.conns, c)
}

// read queues what it reads from r until r fails, stamping each chunk with
// its delivery time if delayed.
func (c *conn) read(r net.Conn, q *queue, delayed bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			ch := chunk{b: append([]byte(nil), buf[:n]...)}
			if delayed {
				ch.at = c.deadline()
			} else {
				c.request(ch.b)
			}
			q.push(ch)
		}
		if err != nil {
			return
		}
	}
}

// write delivers q to w in order, each chunk once its time has come and the
// proxy is not stalled, until the end of the stream or the connection.
func (c *conn) write(w net.Conn, q *queue) {
	for {
		ch, ok := q.first(c.done)
		if !ok || !c.wait(ch.at) {
			return
		}
		if ch.b == nil {
			c.close()
			return
		}
		if _, err := w.Write(ch.b); err != nil {
			c.close()
			return
		}
		q.pop()
	}
}

// wait waits until at and then while the proxy is stalled. It reports
// false if the connection closes first.
func (c *conn) wait(at time.Time) bool {
	if d := time.Until(at); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.done:
			return false
		}
	}
	for {
		c.p.mu.Lock()
		m, changed, closed := c.p.mode, c.p.changed, c.closed
		c.p.mu.Unlock()
		if closed {
			return false // Refuse wakes the writers it cuts
		}
		if m != stalled {
			return true
		}
		select {
		case <-changed:
		case <-c.done:
			return false
		}
	}
}

// chunk is one read's bytes, to be delivered at at (at once if zero); nil
// bytes mark the end of the stream.
type chunk struct {
	at time.Time
	b  []byte
}

// queue is an unbounded FIFO of chunks with one reader and one writer.
// A chunk stays in it until written, so its length counts held chunks.
type queue struct {
	mu     sync.Mutex // protects chunks and more
	chunks []chunk
	more   chan struct{} // closed by push to wake first
}

func (q *queue) push(ch chunk) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.chunks = append(q.chunks, ch)
	if q.more != nil {
		close(q.more)
		q.more = nil
	}
}

// first waits for the oldest chunk; it reports false if done closes first.
func (q *queue) first(done <-chan struct{}) (chunk, bool) {
	for {
		q.mu.Lock()
		if len(q.chunks) > 0 {
			ch := q.chunks[0]
			q.mu.Unlock()
			return ch, true
		}
		if q.more == nil {
			q.more = make(chan struct{})
		}
		more := q.more
		q.mu.Unlock()
		select {
		case <-more:
		case <-done:
			return chunk{}, false
		}
	}
}

func (q *queue) pop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.chunks[0] = chunk{}
	q.chunks = q.chunks[1:]
}
