package redistest

import (
	"testing"
	"time"
)

func TestFreezeThaw(t *testing.T) {
	s := Start(t)
	if s.PID() == 0 {
		t.Fatal("PID() = 0 for a running server")
	}
	if err := ping(s.Addr); err != nil {
		t.Fatalf("ping before Freeze: %v", err)
	}

	s.Freeze()
	if err := ping(s.Addr); err == nil {
		t.Error("ping after Freeze = nil error, want a timeout")
	}
	s.Thaw()
	if err := ping(s.Addr); err != nil {
		t.Errorf("ping after Thaw: %v", err)
	}

	// Stop must reap a frozen server: SIGKILL ends a stopped process.
	s.Freeze()
	stopped := make(chan struct{})
	go func() { s.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop on a frozen server did not return within 10s")
	}
	if got := s.PID(); got != 0 {
		t.Errorf("PID() after Stop = %d, want 0", got)
	}
	s.Freeze() // no-ops when not running
	s.Thaw()

	if err := s.Restart(); err != nil {
		t.Fatalf("Restart after a frozen Stop: %v", err)
	}
	if err := ping(s.Addr); err != nil {
		t.Errorf("ping after Restart: %v", err)
	}
}
