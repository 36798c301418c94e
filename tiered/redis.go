package tiered

import (
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redisclient"
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
func NewRedisClient(rawURL string) (redis.UniversalClient, error) { return redisclient.New(rawURL) }
