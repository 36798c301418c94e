package redistest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// NodeTimeout is the cluster-node-timeout of the clusters started here: a
// master that stops answering is marked failed after it, and its replica
// is promoted about a second later.
const NodeTimeout = time.Second

// Cluster is a local Redis Cluster of three masters with one replica each,
// six redis-server processes on loopback ports.
type Cluster struct {
	Nodes []*Server
	dir   string
}

var sharedCluster struct {
	once sync.Once
	c    *Cluster
	err  error
}

// SharedCluster returns a Redis Cluster shared by the tests of a package,
// started once for the test binary (stopped by [Main]); the same rules hold
// as for [Addr]: a unique namespace, no flushing, no faults.
func SharedCluster(tb testing.TB) *Cluster {
	tb.Helper()
	sharedCluster.once.Do(func() { sharedCluster.c, sharedCluster.err = startCluster() })
	if sharedCluster.err != nil {
		unavailable(tb, sharedCluster.err)
	}
	return sharedCluster.c
}

// StartCluster starts a private Redis Cluster, stopped when tb ends, for a
// test to kill masters of.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	c, err := startCluster()
	if err != nil {
		unavailable(tb, err)
	}
	tb.Cleanup(c.Stop)
	return c
}

func startCluster() (*Cluster, error) {
	if err := ensureInstalled(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		return nil, fmt.Errorf("redis-cli is not installed (it comes with redis-server): %w", err)
	}
	dir, err := os.MkdirTemp("", "redistest-cluster-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir}
	if err := c.start(); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start() error {
	for len(c.Nodes) < 6 {
		s, err := c.startNode()
		if err != nil {
			return err
		}
		c.Nodes = append(c.Nodes, s)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	return c.WaitHealthy(ctx)
}

// startNode starts one cluster node on a port p, with p+10000 (the cluster
// bus port) beside it. Both lie below the kernel's ephemeral range, so the
// clients of tests running beside this one cannot take them; another
// process still can, so a node that exits at once is tried on other ports.
func (c *Cluster) startNode() (*Server, error) {
	var err error
	for range 20 {
		p := 10000 + rand.IntN(12000)
		if !free(p) || !free(p+10000) {
			continue
		}
		s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(p), args: []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", fmt.Sprintf("%s/nodes-%d.conf", c.dir, p),
			"--cluster-node-timeout", strconv.Itoa(int(NodeTimeout / time.Millisecond)),
			// A replica may always take over, however long its link was down.
			"--cluster-replica-validity-factor", "0",
			"--dir", c.dir,
		}}
		if err = s.Restart(); err == nil {
			return s, nil
		}
		if !errors.Is(err, errExited) {
			return nil, err
		}
	}
	if err == nil {
		err = errors.New("no free loopback ports")
	}
	return nil, fmt.Errorf("start a cluster node: %w", err)
}

func free(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// Addrs returns the nodes' addresses.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr
	}
	return addrs
}

// URL returns a redis+cluster:// URL with every node as a seed.
func (c *Cluster) URL() string {
	u := "redis+cluster://" + c.Nodes[0].Addr
	for i, s := range c.Nodes[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + s.Addr
	}
	return u
}

// Stop kills every node and removes the cluster's files.
func (c *Cluster) Stop() {
	for _, s := range c.Nodes {
		s.Stop()
	}
	if c.dir != "" {
		_ = os.RemoveAll(c.dir)
	}
}

// node returns a one-connection client for one node.
func node(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, PoolSize: 1, DialTimeout: time.Second, ReadTimeout: time.Second})
}

// MasterOf returns the node that serves key's slot now.
func (c *Cluster) MasterOf(ctx context.Context, key string) (*Server, error) {
	for _, s := range c.Nodes {
		if s.PID() == 0 {
			continue
		}
		n := node(s.Addr)
		slot, err := n.ClusterKeySlot(ctx, key).Result()
		var shards []redis.ClusterShard
		if err == nil {
			shards, err = n.ClusterShards(ctx).Result()
		}
		n.Close()
		if err != nil {
			continue
		}
		for _, sh := range shards {
			for _, r := range sh.Slots {
				if r.Start <= slot && slot <= r.End {
					addr := shardMaster(sh)
					for _, s := range c.Nodes {
						if s.Addr == addr {
							return s, nil
						}
					}
				}
			}
		}
	}
	return nil, fmt.Errorf("no node knows the master of %q", key)
}

// shardMaster returns the address of sh's master, if one is online.
func shardMaster(sh redis.ClusterShard) string {
	for _, n := range sh.Nodes {
		if n.Role == "master" && n.Health == "online" {
			return net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
		}
	}
	return ""
}

// WaitHealthy waits until every running node reports the cluster ok with
// every slot served by a running master, and every running replica is in
// sync with its master. After a master is killed, it returns once its
// replica has taken over.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	var last error
	for {
		if last = c.healthy(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not healthy: %w", last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Cluster) healthy(ctx context.Context) error {
	running := make(map[string]bool)
	for _, s := range c.Nodes {
		running[s.Addr] = s.PID() != 0
	}
	for _, s := range c.Nodes {
		if !running[s.Addr] {
			continue
		}
		n := node(s.Addr)
		err := func() error {
			info, err := n.ClusterInfo(ctx).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("%s: cluster_state is not ok", s.Addr)
			}
			shards, err := n.ClusterShards(ctx).Result()
			if err != nil {
				return err
			}
			covered := 0
			for _, sh := range shards {
				for _, r := range sh.Slots {
					if m := shardMaster(sh); !running[m] {
						return fmt.Errorf("%s: slots %d-%d have no running master", s.Addr, r.Start, r.End)
					}
					covered += int(r.End - r.Start + 1)
				}
			}
			if covered != 16384 {
				return fmt.Errorf("%s: %d slots covered", s.Addr, covered)
			}
			repl, err := n.Info(ctx, "replication").Result()
			if err != nil {
				return err
			}
			if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
				return fmt.Errorf("%s: replica not in sync", s.Addr)
			}
			return nil
		}()
		n.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// Target is a Redis deployment that a test runs against.
type Target struct {
	Name string // "single" or "cluster"
	// URL is for tiered.NewRedisClient: redis://host:port/0, or
	// redis+cluster:// with every node as a seed.
	URL   string
	Addrs []string
}

// Cluster reports whether t is a Redis Cluster.
func (t Target) Cluster() bool { return t.Name == "cluster" }

// Client returns a client for t with ContextTimeoutEnabled, closed when tb
// ends.
func (t Target) Client(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	var c redis.UniversalClient
	if t.Cluster() {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: t.Addrs, ContextTimeoutEnabled: true})
	} else {
		c = redis.NewClient(&redis.Options{Addr: t.Addrs[0], ContextTimeoutEnabled: true})
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Single returns the shared single Redis of [Addr] as a Target.
func Single(tb testing.TB) Target {
	tb.Helper()
	a := Addr(tb)
	return Target{Name: "single", URL: "redis://" + a + "/0", Addrs: []string{a}}
}

// Target returns c as a Target.
func (c *Cluster) Target() Target { return Target{Name: "cluster", URL: c.URL(), Addrs: c.Addrs()} }

// Each runs f as a subtest on each deployment the tests run on: "single"
// (the shared Redis of [Addr]) and "cluster" (the [SharedCluster]).
// REDISTEST_TARGETS=single (or cluster) runs only that one.
func Each(t *testing.T, f func(t *testing.T, r Target)) {
	t.Helper()
	only := os.Getenv("REDISTEST_TARGETS")
	for _, name := range []string{"single", "cluster"} {
		if only != "" && !strings.Contains(only, name) {
			continue
		}
		t.Run(name, func(t *testing.T) {
			if name == "single" {
				f(t, Single(t))
			} else {
				f(t, SharedCluster(t).Target())
			}
		})
	}
}

// ReplicaOf returns a replica of master.
func (c *Cluster) ReplicaOf(ctx context.Context, master *Server) (*Server, error) {
	n := node(master.Addr)
	defer n.Close()
	info, err := n.Info(ctx, "replication").Result()
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(info) {
		// slave0:ip=127.0.0.1,port=30001,state=online,offset=…,lag=0
		if !strings.HasPrefix(line, "slave") {
			continue
		}
		var ip, port string
		for f := range strings.SplitSeq(strings.TrimSpace(line[strings.IndexByte(line, ':')+1:]), ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "ip":
				ip = v
			case "port":
				port = v
			}
		}
		for _, s := range c.Nodes {
			if s.Addr == net.JoinHostPort(ip, port) {
				return s, nil
			}
		}
	}
	return nil, fmt.Errorf("%s has no replica", master.Addr)
}
