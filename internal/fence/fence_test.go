package fence

import "testing"

func TestTicket(t *testing.T) {
	f := New()
	for _, tc := range []struct {
		name  string
		bump  func()
		valid bool
	}{
		{"nothing", func() {}, true},
		{"the key", func() { f.Invalidate("k") }, false},
		{"another key", func() { f.Invalidate("other") }, true}, // unless it shares the stripe
		{"a tag of the fill", func() { f.InvalidateTag("t1") }, false},
		{"another tag", func() { f.InvalidateTag("t3") }, true},
		{"everything", f.InvalidateAll, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tk := f.Ticket("k", []string{"t1", "t2"})
			if f.stripe("other") == tk.stripe || f.stripe("t3") == f.stripe("t1") || f.stripe("t3") == f.stripe("t2") {
				t.Skip("stripes collide under this seed")
			}
			tc.bump()
			if got := f.Valid(tk); got != tc.valid {
				t.Errorf("Valid after invalidating %s = %v, want %v", tc.name, got, tc.valid)
			}
			if got := f.TagsValid(tk.Tags); got != (tc.valid || tc.name == "the key" || tc.name == "everything") {
				t.Errorf("TagsValid after invalidating %s = %v", tc.name, got)
			}
		})
	}
}

// BenchmarkTicket is the fence's cost on every fill: a ticket and two checks.
func BenchmarkTicket(b *testing.B) {
	f := New()
	b.ReportAllocs()
	for b.Loop() {
		if !f.Valid(f.Ticket("user:42", nil)) {
			b.Fatal("invalid")
		}
	}
}
