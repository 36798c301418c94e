package flight

import (
	"sync"
	"testing"
)

func TestOneLeaderPerKey(t *testing.T) {
	var g Group[string, int]
	const callers = 8
	var wg sync.WaitGroup
	flights := make(chan *Flight[int], callers)
	leaders := make(chan *Flight[int], callers)
	for range callers {
		wg.Go(func() {
			f, leader := g.Join("k")
			if leader {
				leaders <- f
			}
			flights <- f
		})
	}
	wg.Wait()
	close(leaders)
	close(flights)
	lead := <-leaders
	if lead == nil || len(leaders) != 0 {
		t.Fatalf("want exactly one leader")
	}
	g.Finish("k", lead, 42)
	for f := range flights {
		<-f.Done()
		if res, shared := f.Result(); f != lead || res != 42 || !shared {
			t.Errorf("caller got flight %p (%d, shared %v), want the leader's %p (42, true)", f, res, shared, lead)
		}
	}
	if f, leader := g.Join("k"); !leader || f == lead {
		t.Errorf("a Join after Finish should lead a new flight")
	}
}
