// Package redistest provides real redis-server processes to tests.
//
// [Addr] returns a Redis shared by the tests of a package: REDIS_ADDR if
// set, else 127.0.0.1:6379 if it answers, else a redis-server started once
// for the test binary (stopped by [Main]); REDIS_ADDR=own forces the last. Tests that share it must use a
// unique namespace ([Namespace]) and never flush it. [Start] gives a test a
// private redis-server to stop, restart, freeze or break.
//
// Outside CI a test skips when no redis-server can be had; with CI=true it
// fails, so CI can never pass without having run it.
package redistest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var shared struct {
	once sync.Once
	addr string
	srv  *Server
	err  error
}

// Main runs the tests and then stops the shared server, if one was started.
// Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Stop()
	}
	if sharedCluster.c != nil {
		sharedCluster.c.Stop()
	}
	os.Exit(code)
}

// Addr returns the address of a Redis that tb may use, or ends tb.
func Addr(tb testing.TB) string {
	tb.Helper()
	shared.once.Do(func() {
		a := os.Getenv("REDIS_ADDR")
		if a != "" && a != "own" {
			shared.addr, shared.err = a, ping(a)
			return
		}
		if a != "own" && ping("127.0.0.1:6379") == nil {
			shared.addr = "127.0.0.1:6379"
			return
		}
		shared.srv, shared.err = start()
		if shared.err == nil {
			shared.addr = shared.srv.Addr
		}
	})
	if shared.err != nil {
		unavailable(tb, shared.err)
	}
	return shared.addr
}

// Namespace returns a namespace that no other test or run uses.
func Namespace(tb testing.TB) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := strings.NewReplacer("/", "_", " ", "_").Replace(tb.Name())
	return "test:" + name + ":" + hex.EncodeToString(b)
}

func unavailable(tb testing.TB, err error) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("redis unavailable in CI: %v", err)
	}
	tb.Skipf("redis unavailable: %v", err)
}

// Server is a redis-server process owned by one test.
type Server struct {
	Addr   string
	args   []string // beyond the port and the defaults (a cluster node's)
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	mu     sync.Mutex    // protects cmd and exited
}

// Start starts a private redis-server on a free loopback port; it is stopped
// when tb ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := start()
	if err != nil {
		unavailable(tb, err)
	}
	tb.Cleanup(s.Stop)
	return s
}

func start() (*Server, error) {
	if err := ensureInstalled(); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	s := &Server{Addr: addr}
	return s, s.Restart()
}

// Restart starts the server again on the same port after Stop.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return fmt.Errorf("redis-server at %s is running", s.Addr)
	}
	_, port, _ := net.SplitHostPort(s.Addr)
	args := append([]string{"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"}, s.args...)
	cmd := exec.Command("redis-server", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The server dies with the test binary, even when that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ping(s.Addr)
		if err == nil {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("%w: redis-server at %s exited: %s", errExited, s.Addr, bytes.TrimSpace(out.Bytes()))
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("redis-server at %s did not answer: %w", s.Addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.cmd, s.exited = cmd, exited
	return nil
}

// errExited reports a server that exited while starting, most often because
// its port was taken after it was chosen.
var errExited = errors.New("redis-server exited")

// Stop kills the server (SIGKILL: an abrupt failure, not a shutdown) and
// waits for it to exit. It is safe to call more than once, and on a frozen
// server: SIGKILL ends a stopped process too.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Freeze stops the server with SIGSTOP: it keeps its port and the kernel
// still accepts connections, but it answers nothing until Thaw. It is a
// no-op if the server is not running.
func (s *Server) Freeze() { s.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server with SIGCONT; it is a no-op if the server is
// not running.
func (s *Server) Thaw() { s.signal(syscall.SIGCONT) }

// PID returns the server's process ID, or 0 if it is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

func (s *Server) signal(sig os.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// ping speaks just enough RESP to know a Redis answers at addr.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("%s answered %q to PING", addr, strings.TrimSpace(line))
	}
	return nil
}

var install struct {
	once sync.Once
	err  error
}

// ensureInstalled installs Debian's redis-server package when the binary is
// missing and we are root; otherwise it says what is missing.
func ensureInstalled() error {
	install.once.Do(func() {
		if _, err := exec.LookPath("redis-server"); err == nil {
			return
		}
		if os.Geteuid() != 0 {
			install.err = fmt.Errorf("redis-server is not installed (apt-get install redis-server)")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		for _, args := range [][]string{{"update"}, {"install", "-y", "--no-install-recommends", "redis-server"}} {
			cmd := exec.CommandContext(ctx, "apt-get", args...)
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			if out, err := cmd.CombinedOutput(); err != nil {
				install.err = fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
	})
	return install.err
}
