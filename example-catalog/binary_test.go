package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBinaryServesWithNothingInstalled builds the command and runs it as
// the README does on a machine with only Go: no database server (SQLite,
// embedded) and no Redis (REDIS_URL=embedded stands for none answering,
// which this machine cannot arrange), then reads and writes a product.
func TestBinaryServesWithNothingInstalled(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "catalog")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-products", "100")
	cmd.Env = append(cmd.Environ(), "ADDR="+addr, "DATABASE_URL=sqlite:"+filepath.Join(dir, "catalog.sqlite"), "REDIS_URL=embedded")
	logFile := filepath.Join(dir, "log")
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd.Stderr = lf // a file: the process writes it while the test reads it
	logs := func() string { b, _ := os.ReadFile(logFile); return string(b) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); cmd.Wait() }()
	base := "http://" + addr
	var res *http.Response
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if res, err = http.Get(base + "/products/42"); err == nil {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the command never answered: %v\n%s", err, logs())
		}
	}
	var p Product
	json.NewDecoder(res.Body).Decode(&p)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || p.ID != 42 || p.Version != 1 {
		t.Fatalf("GET /products/42: %d %+v", res.StatusCode, p)
	}
	req, _ := http.NewRequest(http.MethodPut, base+"/products/42", strings.NewReader(`{"stock": 5}`))
	req.Header.Set("Content-Type", "application/json")
	if res, err = http.DefaultClient.Do(req); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("PUT: %v %v", res, err)
	}
	res.Body.Close()
	res, err = http.Get(base + "/products/42")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(res.Body).Decode(&p)
	res.Body.Close()
	if p.Stock != 5 || p.Version != 2 {
		t.Errorf("after PUT: %+v", p)
	}
	if !strings.Contains(logs(), "FOR DEMOS ONLY") {
		t.Errorf("no demo-only log line:\n%s", logs())
	}
}
