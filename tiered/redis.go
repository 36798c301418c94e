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
// Unless the URL's query sets them, it enables ContextTimeoutEnabled, so
// that Config.L2Timeout is honoured, and sets ReadTimeout and WriteTimeout
// to 500 ms (the longest a cache call waits), DialTimeout and PoolTimeout
// to 250 ms, MaxRetries and DialerRetries to 1, and the retry backoff to 1
// to 2 ms. It fails on a URL it cannot parse. The caller closes the client.
func NewRedisClient(rawURL string) (redis.UniversalClient, error) { return redisclient.New(rawURL) }
