package tiered_test

// Multi-process tests: the test binary re-executes itself as peer
// processes (as groupcache's http_test.go does), each with its own Cache on
// the same Redis and namespace, driven over stdin/stdout with one command
// per line: "<id> <op> <args...>", answered by "<id> <result...>".

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/invalidation"
	"github.com/tiercache/tiercache/tiered"
)

const peerEnv = "TIERCACHE_TEST_PEER"

// peerConfig is what a peer process is started with.
type peerConfig struct {
	Addr      string
	Namespace string
	Bound     time.Duration
	LeaseTTL  time.Duration
	NoFence   bool
	// Bus makes the peer a bare invalidation bus on channel Namespace,
	// plus a raw subscriber on Namespace+":raw" (sharded on a cluster),
	// printing "applied <key> <unix ns>" for every key either delivers and
	// "flush <reason>" for every flush. With URL, on that Redis.
	Bus bool
	// WriteBehind makes the peer a write-behind process (see
	// runWriteBehindPeer): "write" or "drain"; "flush" makes it a flusher
	// and nothing else (see runFlusherPeer).
	WriteBehind string
	// URL, if set, is the cache's Redis, through tiered.NewRedisClient
	// (the library's client options); DBAddr, if set, is where the
	// "database" lives, if not in the cache's Redis.
	URL    string
	DBAddr string
}

// peerURL is peerConfig.URL for a peer whose cache is on r and whose
// database is the shared single Redis: "" (the cache on Addr too) unless r
// is a cluster.
func peerURL(r redistest.Target) string {
	if r.Cluster() {
		return r.URL
	}
	return ""
}

// dbKey is where the "database" of the multi-process tests keeps key's
// current version: a Redis string outside the cache's namespace.
func dbKey(ns, key string) string { return "db:" + ns + ":" + key }

// runPeer is the peer process's main.
func runPeer() {
	var pc peerConfig
	var err error
	if err = json.Unmarshal([]byte(os.Getenv(peerEnv)), &pc); err != nil {
		fmt.Fprintln(os.Stderr, "peer config:", err)
		os.Exit(2)
	}
	rdb := redis.NewClient(&redis.Options{Addr: pc.Addr, ContextTimeoutEnabled: true, ClientName: "peer"})
	if pc.Bus {
		runBusPeer(rdb, pc)
		return
	}
	if pc.WriteBehind == "flush" {
		runFlusherPeer(pc)
		return
	}
	if pc.WriteBehind != "" {
		runWriteBehindPeer(rdb, pc)
		return
	}
	var cache redis.UniversalClient = rdb
	db := rdb
	if pc.URL != "" {
		if cache, err = tiered.NewRedisClient(pc.URL); err != nil {
			fmt.Fprintln(os.Stderr, "peer client:", err)
			os.Exit(2)
		}
	}
	if pc.DBAddr != "" {
		db = redis.NewClient(&redis.Options{Addr: pc.DBAddr, ContextTimeoutEnabled: true, ClientName: "peer-db"})
	}
	logLevel := slog.LevelWarn
	if pc.URL != "" {
		logLevel = slog.LevelError // a fault test: the warnings are the faults
	}
	c, err := tiered.New[int64](tiered.Config{
		Redis: cache, Namespace: pc.Namespace, StalenessBound: pc.Bound, LeaseTTL: pc.LeaseTTL,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer New:", err)
		os.Exit(2)
	}
	if pc.NoFence {
		tiered.DisableFences(c)
	}
	p := &peerProc{c: c, rdb: db, ns: pc.Namespace, out: bufio.NewWriter(os.Stdout), release: make(chan struct{})}
	in := bufio.NewScanner(os.Stdin)
	var wg sync.WaitGroup
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) < 2 {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); p.run(f[0], f[1], f[2:]) }()
	}
	wg.Wait()
	c.Close()
	rdb.Close()
	os.Exit(0)
}

type peerProc struct {
	c       *tiered.Cache[int64]
	rdb     *redis.Client
	ns      string
	mu      sync.Mutex
	out     *bufio.Writer
	release chan struct{}
	stop    atomic.Bool // ends a readloop
}

func (p *peerProc) reply(id string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.out, append([]any{id}, args...)...)
	p.out.Flush()
}

// load reads the database.
func (p *peerProc) load(ctx context.Context, key string) (int64, error) {
	v, err := p.rdb.Get(ctx, dbKey(p.ns, key)).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, tiered.ErrNotFound
	}
	return v, err
}

// sleepLoad returns a loader that sleeps ms, then reads the database.
func (p *peerProc) sleepLoad(ms string) tiered.LoadFunc[int64] {
	d, _ := strconv.Atoi(ms)
	return func(ctx context.Context, key string) (int64, error) {
		time.Sleep(time.Duration(d) * time.Millisecond)
		return p.load(ctx, key)
	}
}

func (p *peerProc) result(id string, v int64, err error) {
	switch {
	case errors.Is(err, tiered.ErrNotFound):
		p.reply(id, "notfound")
	case err != nil:
		p.reply(id, "err", strconv.Quote(err.Error()))
	default:
		p.reply(id, "ok", v)
	}
}

func (p *peerProc) run(id, op string, args []string) {
	ctx := context.Background()
	arg := func(i int) string {
		if i < len(args) {
			return args[i]
		}
		return ""
	}
	switch op {
	case "get":
		v, err := p.c.Get(ctx, arg(0))
		p.result(id, v, err)
	case "load":
		v, err := p.c.GetOrLoad(ctx, arg(0), p.load)
		p.result(id, v, err)
	case "slowload": // key [tag]: load, say "loaded v", wait for "release", return
		var opts []tiered.Option
		if arg(1) != "" {
			opts = append(opts, tiered.WithTags(arg(1)))
		}
		v, err := p.c.GetOrLoad(ctx, arg(0), func(ctx context.Context, key string) (int64, error) {
			v, err := p.load(ctx, key)
			p.reply(id, "loaded", v)
			<-p.release
			return v, err
		}, opts...)
		p.result(id, v, err)
	case "sleepload": // key ms: a load that takes ms
		v, err := p.c.GetOrLoad(ctx, arg(0), p.sleepLoad(arg(1)))
		p.result(id, v, err)
	case "burst": // key n ms [at]: n goroutines GetOrLoad key at once (at Unix ms at), loads taking ms
		n, _ := strconv.Atoi(arg(1))
		load := p.sleepLoad(arg(2))
		if at, err := strconv.ParseInt(arg(3), 10, 64); err == nil {
			time.Sleep(time.Until(time.UnixMilli(at)))
		}
		vals := make(chan string, n)
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				v, err := p.c.GetOrLoad(ctx, arg(0), load)
				vals <- fmt.Sprint(v, err)
			})
		}
		wg.Wait()
		close(vals)
		seen := make(map[string]bool)
		for v := range vals {
			seen[v] = true
		}
		if len(seen) != 1 {
			p.reply(id, "err", strconv.Quote(fmt.Sprint(seen)))
			return
		}
		for v := range seen {
			p.reply(id, "ok", v)
		}
	case "release":
		p.release <- struct{}{}
		p.reply(id, "ok")
	case "peek":
		v, neg, ok := tiered.PeekL1(p.c, arg(0))
		switch {
		case !ok:
			p.reply(id, "none")
		case neg:
			p.reply(id, "notfound")
		default:
			p.reply(id, "ok", v)
		}
	case "stats":
		b, _ := json.Marshal(p.c.Stats())
		p.reply(id, string(b))
	case "readloop": // file nkeys [tagged [µs]]: random GetOrLoads until "stopread", one "key start version" line each to file, µs apart
		pace, _ := strconv.Atoi(arg(3))
		p.readLoop(id, arg(0), arg(1), arg(2) == "tagged", time.Duration(pace)*time.Microsecond)
	case "stopread":
		p.stop.Store(true)
		p.reply(id, "ok")
	default:
		p.reply(id, "err", strconv.Quote("unknown op "+op))
	}
}

// readLoop reads keys k0..k<nkeys-1> at random; tagged, each with the tag
// "tag:<key>"; with pace, that far apart.
func (p *peerProc) readLoop(id, file, nkeys string, tagged bool, pace time.Duration) {
	n, _ := strconv.Atoi(nkeys)
	f, err := os.Create(file)
	if err != nil {
		p.reply(id, "err", strconv.Quote(err.Error()))
		return
	}
	w := bufio.NewWriter(f)
	reads := 0
	for !p.stop.Load() {
		key := fmt.Sprintf("k%d", rand.IntN(n))
		start := time.Now().UnixNano()
		var opts []tiered.Option
		if tagged {
			opts = append(opts, tiered.WithTags("tag:"+key))
		}
		v, err := p.c.GetOrLoad(context.Background(), key, p.load, opts...)
		if err != nil && !errors.Is(err, tiered.ErrNotFound) {
			fmt.Fprintf(w, "%s %d err\n", key, start)
			continue
		}
		fmt.Fprintf(w, "%s %d %d\n", key, start, v)
		reads++
		switch {
		case pace > 0:
			time.Sleep(pace)
		case reads%8 == 0:
			// Leave the two CPUs of a small CI machine to the writer too.
			time.Sleep(50 * time.Microsecond)
		}
	}
	w.Flush()
	f.Close()
	p.reply(id, "ok", reads)
}

// peer is the test's handle on a peer process.
type peer struct {
	t    testing.TB
	cmd  *exec.Cmd
	in   io.WriteCloser
	mu   sync.Mutex
	next int
	wait map[string]chan string
}

func startPeer(t testing.TB, pc peerConfig) *peer {
	t.Helper()
	cfg, _ := json.Marshal(pc)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), peerEnv+"="+string(cfg))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &peer{t: t, cmd: cmd, in: in, wait: make(map[string]chan string)}
	if pc.Bus || pc.WriteBehind == "flush" {
		// Registered before the peer can print them.
		p.wait["ready"] = make(chan string, 1)
	}
	if pc.WriteBehind == "flush" {
		p.wait["stats"] = make(chan string, 1<<12)
	}
	if pc.Bus {
		p.wait["applied"] = make(chan string, 1<<16)
		p.wait["flush"] = make(chan string, 1<<12)
	}
	for _, w := range []string{"acked", "drained"} {
		if pc.WriteBehind != "" {
			p.wait[w] = make(chan string, 1)
		}
	}
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			id, rest, _ := strings.Cut(s.Text(), " ")
			p.mu.Lock()
			ch := p.wait[id]
			p.mu.Unlock()
			if ch != nil {
				ch <- rest
			}
		}
		p.mu.Lock()
		if ch := p.wait["applied"]; ch != nil {
			close(ch)
		}
		p.mu.Unlock()
	}()
	t.Cleanup(func() {
		in.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return p
}

// lines returns the channel of a bus peer's lines that start with word
// ("ready", "applied" or "flush").
func (p *peer) lines(word string) <-chan string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.wait[word]
}

// start sends a command and returns the channel its answers arrive on.
func (p *peer) start(format string, args ...any) <-chan string {
	p.mu.Lock()
	p.next++
	id := strconv.Itoa(p.next)
	ch := make(chan string, 4)
	p.wait[id] = ch
	p.mu.Unlock()
	fmt.Fprintf(p.in, id+" "+format+"\n", args...)
	return ch
}

// do sends a command and waits for its answer.
func (p *peer) do(format string, args ...any) string {
	p.t.Helper()
	return p.recv(p.start(format, args...))
}

func (p *peer) recv(ch <-chan string) string {
	p.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		p.t.Fatalf("peer did not answer")
		return ""
	}
}

func (p *peer) stats() tiered.Stats {
	p.t.Helper()
	var s tiered.Stats
	if err := json.Unmarshal([]byte(p.do("stats")), &s); err != nil {
		p.t.Fatalf("peer stats: %v", err)
	}
	return s
}

// eventually polls cond every 5 ms for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); ; {
		if cond() {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func runBusPeer(single *redis.Client, pc peerConfig) {
	var rdb redis.UniversalClient = single
	if pc.URL != "" {
		var err error
		if rdb, err = tiered.NewRedisClient(pc.URL); err != nil {
			fmt.Fprintln(os.Stderr, "peer client:", err)
			os.Exit(2)
		}
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	applied := func(keys []string) {
		now := time.Now().UnixNano()
		mu.Lock()
		for _, k := range keys {
			fmt.Fprintln(out, "applied", k, now)
		}
		out.Flush()
		mu.Unlock()
	}
	bus, err := invalidation.New(rdb, invalidation.Config{
		Channel: pc.Namespace, Evict: applied,
		Flush: func(reason string) {
			mu.Lock()
			fmt.Fprintln(out, "flush", reason)
			out.Flush()
			mu.Unlock()
		},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer bus:", err)
		os.Exit(2)
	}
	var ps *redis.PubSub
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		ps = cc.SSubscribe(context.Background(), pc.Namespace+":raw")
	} else {
		ps = rdb.Subscribe(context.Background(), pc.Namespace+":raw")
	}
	if _, err := ps.Receive(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "peer subscribe:", err)
		os.Exit(2)
	}
	go func() {
		for m := range ps.Channel(redis.WithChannelSize(1 << 16)) {
			applied([]string{m.Payload})
		}
	}()
	bus.WaitFresh(context.Background())
	mu.Lock()
	fmt.Fprintln(out, "ready")
	out.Flush()
	mu.Unlock()
	io.Copy(io.Discard, os.Stdin) // until the test closes stdin
	ps.Close()
	bus.Close()
	rdb.Close()
	single.Close()
	os.Exit(0)
}
