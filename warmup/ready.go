package warmup

import (
	"net/http"
	"sync/atomic"

	"github.com/labstack/echo/v4"
)

// Tracker follows a warm-up (Config.Tracker) for a readiness endpoint. The
// zero value is ready only once a warm-up it follows has finished, or
// failed to start (a service should not stay unready for a key list it
// could not read).
type Tracker struct {
	total    atomic.Int64
	n        atomic.Pointer[counters]
	finished atomic.Bool
}

func (t *Tracker) begin(total int, n *counters) {
	if t != nil {
		t.finished.Store(false)
		t.total.Store(int64(total))
		t.n.Store(n)
	}
}

func (t *Tracker) finish() {
	if t != nil {
		t.finished.Store(true)
	}
}

// Fraction returns how much of the warm-up is done, from 0 to 1.
func (t *Tracker) Fraction() float64 {
	if t.finished.Load() {
		return 1
	}
	n, total := t.n.Load(), t.total.Load()
	if n == nil || total == 0 {
		return 0
	}
	return float64(n.done()) / float64(total)
}

// Ready reports whether the warm-up has finished, or done at least
// minFraction of its keys.
func (t *Tracker) Ready(minFraction float64) bool {
	return t.finished.Load() || minFraction > 0 && t.Fraction() >= minFraction
}

// Handler is an Echo readiness handler: 503 until Ready(minFraction),
// then 200. Mount it on the route the load balancer probes.
func (t *Tracker) Handler(minFraction float64) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !t.Ready(minFraction) {
			return c.String(http.StatusServiceUnavailable, "warming up")
		}
		return c.String(http.StatusOK, "ready")
	}
}
