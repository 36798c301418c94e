package echocache

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
)

// captureWriter passes the response to the client as the handler writes it
// and keeps a copy, up to max bytes: past that it stops copying (the
// response is then not stored) but keeps passing it on. It drops the
// Surrogate-Key header, which is for the cache, before it goes out.
type captureWriter struct {
	http.ResponseWriter
	status   int
	body     bytes.Buffer
	max      int64
	overflow bool
	tags     []string
	wrote    bool
}

func (w *captureWriter) WriteHeader(status int) {
	if w.wrote {
		return
	}
	w.wrote = true
	w.status = status
	h := w.ResponseWriter.Header()
	canonicalize(h)
	w.tags = takeSurrogateKeys(h)
	w.ResponseWriter.WriteHeader(status)
}

func (w *captureWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if !w.overflow {
		if int64(w.body.Len()+len(b)) > w.max {
			w.overflow = true
			w.body = bytes.Buffer{}
		} else {
			w.body.Write(b)
		}
	}
	return w.ResponseWriter.Write(b)
}

// Flush sends what was written so far: a streamed response reaches the
// client as it is produced.
func (w *captureWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack hands the connection over (WebSocket upgrades); such a response
// is never stored.
func (w *captureWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.overflow = true
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap lets http.ResponseController reach the writer underneath.
func (w *captureWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// bufferWriter keeps a whole response in memory: a revalidation's answer,
// which goes to the client only if it is not the cache's 304.
type bufferWriter struct {
	header http.Header
	Code   int
	Body   bytes.Buffer
	wrote  bool
}

func (w *bufferWriter) Header() http.Header { return w.header }

func (w *bufferWriter) WriteHeader(status int) {
	if !w.wrote {
		w.wrote, w.Code = true, status
		canonicalize(w.header)
	}
}

// canonicalize rewrites h's field names in canonical form, merging the
// values of names that differ only in case. net/http sends a name put in
// the map directly as it is, and the policy looks fields up by their
// canonical names: without this, a handler's h["set-cookie"] would be
// stored and replayed to other clients.
func canonicalize(h http.Header) {
	for k, v := range h {
		if ck := http.CanonicalHeaderKey(k); ck != k {
			delete(h, k)
			h[ck] = append(h[ck], v...)
		}
	}
}

// Flush does nothing: the buffer is sent, if at all, once complete. A
// handler that flushes must not panic here (echo.Response.Flush does when
// the writer cannot flush).
func (w *bufferWriter) Flush() {}

func (w *bufferWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.Body.Write(b)
}
