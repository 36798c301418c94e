package redistest

import (
	"context"
	"testing"
	"time"
)

func TestClusterFailover(t *testing.T) {
	c := StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := c.MasterOf(ctx, "some-key")
	if err != nil {
		t.Fatal(err)
	}
	m.Stop()
	start := time.Now()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	m2, err := c.MasterOf(ctx, "some-key")
	if err != nil {
		t.Fatal(err)
	}
	if m2 == m {
		t.Fatal("master did not change")
	}
	t.Logf("promoted in %v", time.Since(start))
}
