package main

import (
	"strings"
	"testing"
)

// TestRedactedURL: a Redis URL goes into the log without its password.
func TestRedactedURL(t *testing.T) {
	for _, raw := range []string{
		"redis://user:s3cret@10.0.0.1:6379/0",
		"rediss+cluster://:s3cret@h1:7000?addr=h2:7001",
		"redis://h:6379/0\x7f:s3cret",
	} {
		if got := redacted(raw); strings.Contains(got, "s3cret") {
			t.Errorf("redacted(%q) = %q: the password shows", raw, got)
		}
	}
	if got := redacted("redis://127.0.0.1:6379/0"); got != "redis://127.0.0.1:6379/0" {
		t.Errorf("redacted of a URL without a password = %q, want it unchanged", got)
	}
}
