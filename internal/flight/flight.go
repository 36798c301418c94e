// Package flight lets the concurrent callers of one key in a process share
// one call. It is singleflight's idea (golang.org/x/sync), written out
// because a batch must know, before it calls its loader, which of its keys
// it leads and which are already in flight for other callers;
// singleflight starts the leader's function itself and does not say who
// leads. Here the leader runs the call where it likes and then finishes
// the flight.
//
//	var g flight.Group[string, result]
//	f, leader := g.Join(key)
//	if leader {
//		go func() { g.Finish(key, f, load(key)) }()
//	}
//	<-f.Done()
//	res, shared := f.Result()
package flight

import "sync"

// Group holds the flights in progress. Its zero value is ready to use.
type Group[K comparable, R any] struct {
	mu sync.Mutex
	m  map[K]*Flight[R]
}

// Flight is one key's call in progress. res is written before done is
// closed and read only after.
type Flight[R any] struct {
	done    chan struct{}
	res     R
	callers int // final once done is closed
}

// Done is closed when the flight's leader has finished it.
func (f *Flight[R]) Done() <-chan struct{} { return f.done }

// Result returns what the leader finished the flight with, and whether
// more than one caller joined it. Call it only once Done is closed.
func (f *Flight[R]) Result() (res R, shared bool) { return f.res, f.callers > 1 }

// Join returns the flight for key, creating it if there is none; leader
// reports that the caller created it and must Finish it.
func (g *Group[K, R]) Join(key K) (f *Flight[R], leader bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f = g.m[key]; f != nil {
		f.callers++
		return f, false
	}
	if g.m == nil {
		g.m = make(map[K]*Flight[R])
	}
	f = &Flight[R]{done: make(chan struct{}), callers: 1}
	g.m[key] = f
	return f, true
}

// Finish hands res to every caller of key's flight f. Callers arriving
// after it start a new flight.
func (g *Group[K, R]) Finish(key K, f *Flight[R], res R) {
	f.res = res
	g.mu.Lock()
	delete(g.m, key)
	g.mu.Unlock()
	close(f.done)
}
