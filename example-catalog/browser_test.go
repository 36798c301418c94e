package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiered"
)

// chromium returns the path of a headless-capable Chromium, or ends t:
// a skip on a developer's machine, a failure in CI (.ci/run installs it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no Chromium (Debian's chromium package) for the browser test")
	}
	t.Skip("no Chromium (apt-get install chromium) for the browser test")
	return ""
}

// headless runs Chromium on url with JavaScript given budget of virtual
// time, and returns the DOM it rendered; with shot set, it also writes a
// screenshot there.
func headless(t *testing.T, bin, url, shot string, budget time.Duration) string {
	t.Helper()
	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		// This machine's network is closed: without these, Chromium keeps
		// trying to reach Google's hosts.
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1000,720",
		"--virtual-time-budget=" + strconv.Itoa(int(budget.Milliseconds())),
	}
	if shot != "" {
		args = append(args, "--screenshot="+shot)
	} else {
		args = append(args, "--dump-dom")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append(args, url)...).Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return string(out)
}

func TestDebugPageInABrowser(t *testing.T) {
	bin := chromium(t)
	rdb, err := tiered.NewRedisClient("redis://" + redistest.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	srv := startApp(t, Config{
		DatabaseURL: "sqlite:" + filepath.Join(t.TempDir(), "catalog.sqlite"), Seed: 100, WriteRate: -1,
		Redis: rdb, RedisKind: "redis", Namespace: redistest.Namespace(t),
	}).srv

	// A short load: 30 products read 10 times each.
	for i := range 300 {
		res, err := http.Get(fmt.Sprintf("%s/products/%d", srv.URL, 1+i%30))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	// And load while the page renders, so that it shows live rates.
	stop := make(chan struct{})
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if res, err := http.Get(fmt.Sprintf("%s/products/%d", srv.URL, 1+i%40)); err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		}
	}()
	defer func() { close(stop); <-loaded }()
	dom := headless(t, bin, srv.URL+"/debug/cache", "", 3*time.Second)
	// The rows carry their rates in data-rate: the last cell is the rate
	// since start.
	row := regexp.MustCompile(`(?s)<tr data-tier="HTTP responses">.*?</tr>`).FindString(dom)
	rates := regexp.MustCompile(`data-rate="([0-9.]+)"`).FindAllStringSubmatch(row, -1)
	if len(rates) != 2 {
		t.Fatalf("no HTTP responses row with two rates in the page:\n%s", dom)
	}
	if r, _ := strconv.ParseFloat(rates[1][1], 64); r < 80 {
		t.Errorf("HTTP hit rate since start %v%%, want about 90%%", r)
	}
	t.Logf("HTTP hit rate shown: %s%% since start", rates[1][1])

	shot := filepath.Join(t.TempDir(), "debug-cache.png")
	if p := os.Getenv("CATALOG_SCREENSHOT"); p != "" {
		shot = p // go test -run Browser ./example-catalog/ with CATALOG_SCREENSHOT=$PWD/docs/catalog-debug.png
	}
	headless(t, bin, srv.URL+"/debug/cache", shot, 3*time.Second)
	if b, err := os.ReadFile(shot); err != nil || len(b) < 1000 || string(b[1:4]) != "PNG" {
		t.Errorf("screenshot %s: %v (%d bytes)", shot, err, len(b))
	}
}
