package tiered

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// NewRedisClient returns a go-redis client for rawURL with options suited to
// a cache, where a slow answer is worth less than a fast miss:
//
//   - redis://[user:password@]host:port/db and rediss:// (TLS), as parsed by
//     redis.ParseURL, give a *redis.Client;
//   - redis+cluster:// and rediss+cluster://, with more seed nodes as
//     addr=host:port query parameters, give a *redis.ClusterClient.
//
// Unless the URL's query sets them, it enables ContextTimeoutEnabled (so the
// per-call Config.L2Timeout is honoured: go-redis cuts a call at the
// earlier of its context's deadline and its own timeouts), sets
// ReadTimeout and WriteTimeout to 500 ms, the longest a cache call waits
// (an invalidation's publish, see Config.L2Timeout), DialTimeout and
// PoolTimeout to 250 ms, and MaxRetries and DialerRetries to 1 with a retry
// backoff of 1 to 2 ms.
// The caller owns the client and closes it.
func NewRedisClient(rawURL string) (redis.UniversalClient, error) {
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
		return redis.NewClusterClient(o), nil
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

// warnIfUnbounded logs when a client will not honour Config.L2Timeout on a
// hung connection: the breaker still opens, but each of the first calls
// can then take the client's full ReadTimeout.
func warnIfUnbounded(log *slog.Logger, c redis.UniversalClient) {
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
