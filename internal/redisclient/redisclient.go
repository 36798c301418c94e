// Package redisclient makes go-redis clients fit for a cache from URLs, and
// keeps a Cluster client's slot map current after a failover:
//
//	rdb, err := redisclient.New("redis+cluster://10.0.0.1:6379?addr=10.0.0.2:6379")
//	redisclient.Watch(rdb.(*redis.ClusterClient)) // New does it already
package redisclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
	"weak"

	"github.com/redis/go-redis/v9"
)

// New is tiered.NewRedisClient.
func New(rawURL string) (redis.UniversalClient, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, fmt.Errorf("tiered: Redis URL %q has no scheme", redactURL(rawURL))
	}
	q := ""
	if _, after, ok := strings.Cut(rest, "?"); ok {
		q = after
	}
	unset := func(name string) bool { return !strings.Contains(q, name+"=") }
	switch scheme {
	case "redis", "rediss", "unix":
		o, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, urlError(rawURL, err)
		}
		o.ContextTimeoutEnabled = true
		cacheTimeouts(unset, &o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetries, &o.DialerRetries, &o.MinRetryBackoff, &o.MaxRetryBackoff)
		return redis.NewClient(o), nil
	case "redis+cluster", "rediss+cluster":
		o, err := redis.ParseClusterURL(strings.TrimSuffix(scheme, "+cluster") + "://" + rest)
		if err != nil {
			return nil, urlError(rawURL, err)
		}
		o.ContextTimeoutEnabled = true
		cacheTimeouts(unset, &o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetries, &o.DialerRetries, &o.MinRetryBackoff, &o.MaxRetryBackoff)
		c := redis.NewClusterClient(o)
		Watch(c)
		return c, nil
	}
	return nil, fmt.Errorf("tiered: Redis URL scheme %q: want redis, rediss, unix, redis+cluster or rediss+cluster", scheme)
}

func cacheTimeouts(unset func(string) bool, dial, read, write, pool *time.Duration, retries, dialRetries *int, minBackoff, maxBackoff *time.Duration) {
	if unset("dial_timeout") {
		*dial = 250 * time.Millisecond
	}
	if unset("read_timeout") {
		*read = 500 * time.Millisecond
	}
	if unset("write_timeout") {
		*write = 500 * time.Millisecond
	}
	if unset("pool_timeout") {
		*pool = 250 * time.Millisecond
	}
	// One quick retry covers a pooled connection that went stale (Redis
	// restarted); go-redis's default backoff before it (8 to 512 ms) is
	// longer than a cache miss should ever wait.
	if unset("max_retries") {
		*retries = 1
	}
	if unset("min_retry_backoff") {
		*minBackoff = time.Millisecond
	}
	if unset("max_retry_backoff") {
		*maxBackoff = 2 * time.Millisecond
	}
	// go-redis dials up to 5 times, 100 ms apart, before a command fails:
	// half a second per call against a stopped Redis. One dial is enough
	// for a cache, which has the loader to fall back on.
	if unset("dialer_retries") {
		*dialRetries = 1
	}
}

// urlError reports a bad URL without its password, which go-redis's parse
// errors quote in full.
func urlError(rawURL string, err error) error {
	msg := err.Error()
	if at := strings.LastIndex(rawURL, "@"); at >= 0 {
		msg = strings.ReplaceAll(msg, rawURL[:at], "[redacted]")
	}
	return fmt.Errorf("tiered: Redis URL %q: %s", redactURL(rawURL), msg)
}

// redactURL hides a password in a URL that goes into an error or a log.
func redactURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return raw
	}
	user, _, _ := strings.Cut(rest[:at], ":")
	return scheme + "://" + user + ":xxxxx" + rest[at:]
}

// WarnIfUnbounded logs when a client will not honour Config.L2Timeout on a
// hung connection: the breaker still opens, but each of the first calls
// can then take the client's full ReadTimeout.
func WarnIfUnbounded(log *slog.Logger, c redis.UniversalClient) {
	enabled := true
	switch c := c.(type) {
	case *redis.Client:
		enabled = c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		enabled = c.Options().ContextTimeoutEnabled
	}
	if !enabled {
		log.Warn("tiercache: the Redis client has ContextTimeoutEnabled off, so L2Timeout cannot cut a hung call short; see tiered.NewRedisClient")
	}
}

// watched holds the cluster clients that watchTopology has hooked, weakly:
// a client the application drops is not kept alive by it.
var watched sync.Map // weak.Pointer[redis.ClusterClient] → struct{}

// Watch makes c reload its slot map after a command fails as if
// a node were gone: go-redis reloads it only on a MOVED reply or every
// ClusterStateReloadInterval (a minute), and until then dials a dead
// master again for every command to its slots, though its replica has
// taken over. ReloadState is asynchronous, and go-redis runs at most one
// reload per 200 ms, so a burst of errors costs one CLUSTER SLOTS. Once
// per client.
func Watch(c *redis.ClusterClient) {
	if _, dup := watched.LoadOrStore(weak.Make(c), struct{}{}); dup {
		return
	}
	c.AddHook(topologyHook{weak.Make(c)})
	watched.Range(func(k, _ any) bool {
		if k.(weak.Pointer[redis.ClusterClient]).Value() == nil {
			watched.Delete(k)
		}
		return true
	})
}

type topologyHook struct {
	c weak.Pointer[redis.ClusterClient]
}

func (h topologyHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h topologyHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.check(err)
		return err
	}
}

func (h topologyHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.check(err)
		return err
	}
}

func (h topologyHook) check(err error) {
	if nodeGone(err) {
		if c := h.c.Value(); c != nil {
			c.ReloadState(context.Background())
		}
	}
}

// nodeGone reports an error that a moved or dead node can cause: a
// network failure, a timeout, or a cluster that is failing over. Redis's
// other replies (a miss, WRONGTYPE, a script's error) say nothing of the
// topology.
func nodeGone(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	var nerr net.Error
	if errors.As(err, &nerr) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed) {
		return true
	}
	for _, prefix := range []string{"CLUSTERDOWN", "TRYAGAIN", "MOVED", "READONLY", "MASTERDOWN"} {
		if redis.HasErrorPrefix(err, prefix) {
			return true
		}
	}
	var rerr redis.Error
	return !errors.As(err, &rerr) // EOF, a reset: not a reply
}
