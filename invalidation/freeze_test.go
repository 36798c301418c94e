package invalidation

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

// freezeEnv, set to "addr channel", makes the test binary a frozen-process
// peer (runFrozenPeer) instead of running tests.
const freezeEnv = "TIERCACHE_FREEZE_PEER"

// TestFreshAfterAFreeze freezes a process (SIGSTOP) for three bounds and
// resumes it: the first thing it asks, usually before any other goroutine
// of its has run, is Fresh, which must say false. A flag that only the
// watchdog clears still says true then, and an L1 copy older than the bound
// would be served; on a busy machine the same happens to a process that
// the kernel leaves unscheduled past the bound. The peer's Redis is
// stalled (through a proxy) for the freeze, so that no heartbeat of its
// can come back between the resumption and that first question.
func TestFreshAfterAFreeze(t *testing.T) {
	proxy := faultproxy.Start(t, redistest.Addr(t))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), freezeEnv+"="+proxy.Addr()+" "+newChannel(t))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("peer: %q, want ready (%v)", lines.Text(), lines.Err())
	}
	proxy.Stall()
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * frozenBound) // the fault: a process that runs nothing
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if !lines.Scan() {
		t.Fatalf("peer said nothing after resuming (%v)", lines.Err())
	}
	if got := lines.Text(); got != "fresh=false" {
		t.Errorf("peer after a freeze of three bounds: %s, want fresh=false", got)
	}
}

const frozenBound = 200 * time.Millisecond

func init() {
	if v := os.Getenv(freezeEnv); v != "" {
		addr, ch, _ := strings.Cut(v, " ")
		runFrozenPeer(addr, ch)
	}
}

// runFrozenPeer runs a bus, says ready once it is fresh, then spins on one
// goroutine (GOMAXPROCS 1, so no other goroutine runs between two turns of
// the loop unless the runtime preempts it) until it sees a gap in the
// clock, the freeze; it then prints what Fresh said and exits.
func runFrozenPeer(addr, ch string) {
	runtime.GOMAXPROCS(1)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	b, err := New(rdb, Config{
		Channel: ch, StalenessBound: frozenBound, Logger: discardLogger,
		Evict: func([]string) {}, Flush: func(string) {},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !b.WaitFresh(ctx) {
		fmt.Fprintln(os.Stderr, "peer: not fresh in 10s")
		os.Exit(2)
	}
	start := time.Now()
	prev := start
	fmt.Println("ready") // the freeze may come while this is written
	for {
		now := time.Now()
		if now.Sub(prev) > frozenBound {
			fmt.Printf("fresh=%v\n", b.Fresh())
			os.Exit(0)
		}
		if now.Sub(start) > time.Minute {
			fmt.Println("no freeze")
			os.Exit(2)
		}
		prev = now
	}
}
