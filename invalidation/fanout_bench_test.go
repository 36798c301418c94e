package invalidation

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// BenchmarkShardFanout measures what one Redis (one cluster shard) can
// deliver on one pub/sub channel: messages of a bus's size for one key
// (about 60 bytes), pipelined PUBLISHes, to subs subscribers, each on its
// own connection. It reports deliveries (messages × subscribers) per
// second, the figure docs/operations.md's capacity model starts from. The
// subscribers run on the same two cores as Redis, so it is a lower bound.
func BenchmarkShardFanout(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	payload := strings.Repeat("x", 60)
	for _, subs := range []int{1, 10, 50, 200} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			ch := redistest.Namespace(b)
			var got atomic.Int64
			var pss []*redis.PubSub
			var clients []*redis.Client
			var readers sync.WaitGroup
			for range subs {
				c := redis.NewClient(&redis.Options{Addr: srv.Addr})
				clients = append(clients, c)
				ps := c.Subscribe(ctx, ch)
				if _, err := ps.Receive(ctx); err != nil {
					b.Fatal(err)
				}
				pss = append(pss, ps)
				readers.Go(func() {
					for {
						if _, err := ps.Receive(ctx); err != nil {
							return
						}
						got.Add(1)
					}
				})
			}
			pub := redis.NewClient(&redis.Options{Addr: srv.Addr})
			defer pub.Close()
			start := time.Now()
			sent := 0
			for sent < b.N {
				n := min(100, b.N-sent)
				if _, err := pub.Pipelined(ctx, func(p redis.Pipeliner) error {
					for range n {
						p.Publish(ctx, ch, payload)
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
				sent += n
			}
			want := int64(b.N * subs)
			for deadline := time.Now().Add(time.Minute); got.Load() < want && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			el := time.Since(start)
			if got.Load() < want {
				b.Errorf("delivered %d of %d", got.Load(), want)
			}
			b.ReportMetric(float64(got.Load())/el.Seconds(), "deliveries/s")
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
			for i, ps := range pss {
				ps.Close()
				clients[i].Close()
			}
			readers.Wait()
		})
	}
}
