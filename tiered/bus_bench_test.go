package tiered_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/invalidation"
	"github.com/tiercache/tiercache/tiered"
)

// BenchmarkPropagation measures an invalidation from the moment it is
// published here to the moment another process has applied it, one at a
// time, and reports the p50 and p99 of those latencies, on a single Redis
// and on a cluster. impl=pubsub is the baseline: a raw PUBLISH (SPUBLISH
// on the cluster) of the key to a raw go-redis subscriber in the same peer
// process.
func BenchmarkPropagation(b *testing.B) {
	for _, r := range []redistest.Target{redistest.Single(b), redistest.SharedCluster(b).Target()} {
		b.Run("redis="+r.Name, func(b *testing.B) { benchPropagation(b, r) })
	}
}

func benchPropagation(b *testing.B, r redistest.Target) {
	ns := redistest.Namespace(b)
	p := startPeer(b, peerConfig{Addr: r.Addrs[0], URL: r.URL, Namespace: ns, Bus: true})
	select {
	case <-p.lines("ready"):
	case <-time.After(10 * time.Second):
		b.Fatal("bus peer not ready")
	}
	applied := p.lines("applied")
	rdb := r.Client(b)
	bus, err := invalidation.New(rdb, invalidation.Config{Channel: ns, Evict: func([]string) {}, Flush: func(string) {}, Logger: discardLogger})
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	ctx := context.Background()
	for _, impl := range []string{"pubsub", "bus"} {
		publish := func(key string) error { return rdb.Publish(ctx, ns+":raw", key).Err() }
		if cc, ok := rdb.(*redis.ClusterClient); ok {
			publish = func(key string) error { return cc.SPublish(ctx, ns+":raw", key).Err() }
		}
		if impl == "bus" {
			publish = func(key string) error { return bus.Publish(ctx, key) }
		}
		b.Run("impl="+impl, func(b *testing.B) {
			var lat []time.Duration
			for i := 0; b.Loop(); i++ {
				key := fmt.Sprintf("k%d", i)
				start := time.Now().UnixNano()
				if err := publish(key); err != nil {
					b.Fatal(err)
				}
				for {
					line, ok := <-applied
					if !ok {
						b.Fatal("peer exited")
					}
					f := strings.Fields(line)
					if len(f) == 2 && f[0] == key {
						at, _ := strconv.ParseInt(f[1], 10, 64)
						lat = append(lat, time.Duration(at-start))
						break
					}
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// BenchmarkInvalidationThroughput publishes distinct keys from parallel
// goroutines until another bus has applied them all, and reports keys/s
// and keys per message. impl=publish-per-key is the baseline: one raw
// PUBLISH per key, counted by a raw subscriber.
func BenchmarkInvalidationThroughput(b *testing.B) {
	addr := redistest.Addr(b)
	ctx := context.Background()
	newClient := func() *redis.Client { return redis.NewClient(&redis.Options{Addr: addr, PoolSize: 64}) }
	b.Run("impl=publish-per-key", func(b *testing.B) {
		ch := redistest.Namespace(b)
		pub, sub := newClient(), newClient()
		defer pub.Close()
		defer sub.Close()
		ps := sub.Subscribe(ctx, ch)
		defer ps.Close()
		if _, err := ps.Receive(ctx); err != nil {
			b.Fatal(err)
		}
		var got atomic.Int64
		msgs := ps.Channel(redis.WithChannelSize(1 << 20))
		go func() {
			for range msgs {
				got.Add(1)
			}
		}()
		publishAll(b, &got, func(key string) error { return pub.Publish(ctx, ch, key).Err() })
		b.ReportMetric(1, "keys/msg")
	})
	b.Run("impl=bus", func(b *testing.B) {
		ch := redistest.Namespace(b)
		pub, sub := newClient(), newClient()
		defer pub.Close()
		defer sub.Close()
		var got atomic.Int64
		receiver, err := invalidation.New(sub, invalidation.Config{Channel: ch, Logger: discardLogger,
			Evict: func(keys []string) { got.Add(int64(len(keys))) }, Flush: func(string) {}})
		if err != nil {
			b.Fatal(err)
		}
		defer receiver.Close()
		sender, err := invalidation.New(pub, invalidation.Config{Channel: ch, Logger: discardLogger,
			Evict: func([]string) {}, Flush: func(string) {}})
		if err != nil {
			b.Fatal(err)
		}
		defer sender.Close()
		receiver.WaitFresh(ctx)
		publishAll(b, &got, func(key string) error { return sender.Publish(ctx, key) })
		s := sender.Stats()
		b.ReportMetric(float64(s.SentKeys)/float64(max(s.SentMessages, 1)), "keys/msg")
	})
}

// publishAll publishes b.N distinct keys from many goroutines, waits until
// got says the receiver has them all, and reports keys/s.
func publishAll(b *testing.B, got *atomic.Int64, publish func(key string) error) {
	var n atomic.Int64
	start := time.Now()
	b.SetParallelism(32) // many writers, as in a busy service
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := publish(fmt.Sprintf("key:%d", n.Add(1))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	for end := time.Now().Add(30 * time.Second); got.Load() < n.Load(); {
		if time.Now().After(end) {
			b.Fatalf("received %d of %d keys", got.Load(), n.Load())
		}
		time.Sleep(100 * time.Microsecond)
	}
	b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "keys/s")
}

// TestPacedWritesDoNotFlush: 1,000 paced writes in this process, another
// process's bus applies every key and flushes at most once (on a single
// Redis and on a cluster, where each PUBLISH going to a random node used
// to reorder one publisher's messages, which read as gaps: 82 to 133
// flushes per 1,000 writes).
func TestPacedWritesDoNotFlush(t *testing.T) {
	redistest.Each(t, func(t *testing.T, r redistest.Target) {
		ns := redistest.Namespace(t)
		p := startPeer(t, peerConfig{Addr: r.Addrs[0], URL: r.URL, Namespace: "tiercache:inv:" + ns, Bus: true})
		select {
		case <-p.lines("ready"):
		case <-time.After(10 * time.Second):
			t.Fatal("bus peer not ready")
		}
		rdb := libraryClient(t, r.URL)
		c := newIntCache(t, tiered.Config{Redis: rdb, Namespace: ns})
		ctx := context.Background()
		const n = 1000
		started := make(map[string]int64, n)
		for i := range n {
			key := fmt.Sprintf("k%d", i)
			started[key] = time.Now().UnixNano()
			if err := c.Set(ctx, key, int64(i)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		var lat []time.Duration
		applied := p.lines("applied")
		for timeout := time.After(10 * time.Second); len(lat) < n; {
			select {
			case line := <-applied:
				f := strings.Fields(line)
				if at, ok := started[f[0]]; ok && len(f) == 2 {
					ns, _ := strconv.ParseInt(f[1], 10, 64)
					lat = append(lat, time.Duration(ns-at))
					delete(started, f[0])
				}
			case <-timeout:
				t.Fatalf("the other process applied %d of %d writes within 10 s", len(lat), n)
			}
		}
		var flushes []string
		for more := true; more; {
			select {
			case reason := <-p.lines("flush"):
				if reason != "fresh" {
					flushes = append(flushes, reason)
				}
			default:
				more = false
			}
		}
		slices.Sort(lat)
		t.Logf("%s: %d writes, the other process flushed %d times (%q); Set to applied p50 %v, p99 %v",
			r.Name, n, len(flushes), flushes, lat[n/2], lat[n*99/100])
		if len(flushes) > 1 {
			t.Errorf("%d flushes in the other process for %d paced writes, want at most 1", len(flushes), n)
		}
	})
}
