package tiered_test

import (
	"context"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestOneLoadPerCluster: three processes × 50 goroutines miss the same
// cold key at once, with a loader that takes 100 ms: the loader runs once
// in all, and every caller gets its value. With the leases switched off,
// each process loads: the test sees what the lease prevents.
func TestOneLoadPerCluster(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		t.Run("lease", func(t *testing.T) {
			if n := stampede(t, r, false); n != 1 {
				t.Errorf("the loader ran %d times across the processes, want 1", n)
			}
		})
		t.Run("no-lease", func(t *testing.T) {
			if n := stampede(t, r, true); n != 3 {
				t.Errorf("without leases the loader ran %d times, want one per process (3)", n)
			}
		})
	})
}

func stampede(t *testing.T, r redistest.Target, noLease bool) (loads int64) {
	ctx := context.Background()
	addr, ns := redistest.Addr(t), redistest.Namespace(t)
	raw := newClient(t) // the database
	raw.Set(ctx, dbKey(ns, "k"), 7, 0)
	t.Cleanup(func() { raw.Del(context.Background(), dbKey(ns, "k")) })
	var peers []*peer
	for range 3 {
		peers = append(peers, startPeer(t, peerConfig{Addr: addr, URL: peerURL(r), Namespace: ns, Bound: 2 * time.Second, NoFence: noLease}))
	}
	// All three at one instant, whatever each process's start-up took:
	// otherwise, without leases, a late process finds the early one's
	// value in L2 and the test shows nothing.
	at := time.Now().Add(1500 * time.Millisecond).UnixMilli()
	var bursts []<-chan string
	for _, p := range peers {
		bursts = append(bursts, p.start("burst k 50 100 %d", at))
	}
	for i, p := range peers {
		if r := p.recv(bursts[i]); r != "ok 7 <nil>" {
			t.Errorf("process %d: %s", i, r)
		}
	}
	var waits int64
	for _, p := range peers {
		s := p.stats()
		loads += s.Loads
		waits += s.LeaseWaits
	}
	t.Logf("150 callers in 3 processes: %d load(s), %d process(es) waited on another's lease", loads, waits)
	return loads
}

// TestLeaseHolderDiesAnotherTakesOver: the process holding a key's lease is
// killed mid-load; a process waiting for it loads once the lease expires,
// within the lease TTL plus its own load.
func TestLeaseHolderDiesAnotherTakesOver(t *testing.T) {
	ctx := context.Background()
	addr, ns := redistest.Addr(t), redistest.Namespace(t)
	raw := newClient(t)
	raw.Set(ctx, dbKey(ns, "k"), 7, 0)
	t.Cleanup(func() { raw.Del(context.Background(), dbKey(ns, "k")) })
	const leaseTTL = 500 * time.Millisecond
	a := startPeer(t, peerConfig{Addr: addr, Namespace: ns, Bound: 2 * time.Second, LeaseTTL: leaseTTL})
	b := startPeer(t, peerConfig{Addr: addr, Namespace: ns, Bound: 2 * time.Second, LeaseTTL: leaseTTL})
	a.start("sleepload k 10000")
	eventually(t, 2*time.Second, "A never took the lease", func() bool { return raw.Exists(ctx, ns+":k").Val() == 1 })
	leased := time.Now()
	got := b.start("sleepload k 100")
	eventually(t, 2*time.Second, "B never waited on A's lease", func() bool { return b.stats().LeaseWaits == 1 })
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if r := b.recv(got); r != "ok 7" {
		t.Fatalf("B: %s", r)
	}
	took := time.Since(leased)
	if s := b.stats(); s.Loads != 1 {
		t.Errorf("B loaded %d times, want 1", s.Loads)
	}
	t.Logf("B answered %v after A took the lease (lease TTL %v, load 100ms)", took, leaseTTL)
	if took > leaseTTL+100*time.Millisecond+250*time.Millisecond {
		t.Errorf("B took %v to take over, want about the lease TTL %v plus its 100 ms load", took, leaseTTL)
	}
}
