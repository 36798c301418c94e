package httpcache

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// secs is a present delta of n seconds.
func secs(n int64) Delta { return Delta{Present: true, Value: time.Duration(n) * time.Second} }

// zero is a present delta of 0: what a malformed or conflicting max-age or
// s-maxage counts as.
var zero = Delta{Present: true}

func TestParseCacheControl(t *testing.T) {
	capped := Delta{Present: true, Value: maxDelta}
	tests := []struct {
		name   string
		values []string
		want   Directives
	}{
		{"nil", nil, Directives{}},
		{"empty line", []string{""}, Directives{}},

		// Every directive, one at a time.
		{"no-store", []string{"no-store"}, Directives{NoStore: true}},
		{"no-cache", []string{"no-cache"}, Directives{NoCache: true}},
		{"max-age", []string{"max-age=60"}, Directives{MaxAge: secs(60)}},
		{"max-age=0", []string{"max-age=0"}, Directives{MaxAge: secs(0)}},
		{"public", []string{"public"}, Directives{Public: true}},
		{"private", []string{"private"}, Directives{Private: true}},
		{"must-revalidate", []string{"must-revalidate"}, Directives{MustRevalidate: true}},
		{"proxy-revalidate", []string{"proxy-revalidate"}, Directives{ProxyRevalidate: true}},
		{"no-transform", []string{"no-transform"}, Directives{NoTransform: true}},
		{"immutable", []string{"immutable"}, Directives{Immutable: true}},
		{"s-maxage", []string{"s-maxage=30"}, Directives{SMaxAge: secs(30)}},
		{"stale-while-revalidate", []string{"stale-while-revalidate=15"}, Directives{StaleWhileRevalidate: secs(15)}},
		{"stale-if-error", []string{"stale-if-error=86400"}, Directives{StaleIfError: secs(86400)}},
		{"max-stale with a value", []string{"max-stale=10"}, Directives{MaxStale: secs(10)}},
		{"max-stale without a value is the 2^31 s cap", []string{"max-stale"}, Directives{MaxStale: capped}},
		{"min-fresh", []string{"min-fresh=5"}, Directives{MinFresh: secs(5)}},
		{"only-if-cached", []string{"only-if-cached"}, Directives{OnlyIfCached: true}},
		{"all response directives", []string{
			"no-store, no-cache, max-age=1, public, private, must-revalidate, proxy-revalidate, " +
				"no-transform, immutable, s-maxage=2, stale-while-revalidate=3, stale-if-error=4"},
			Directives{NoStore: true, NoCache: true, MaxAge: secs(1), Public: true, Private: true,
				MustRevalidate: true, ProxyRevalidate: true, NoTransform: true, Immutable: true,
				SMaxAge: secs(2), StaleWhileRevalidate: secs(3), StaleIfError: secs(4)}},
		{"all request directives", []string{"no-cache, no-store, max-age=1, max-stale=2, min-fresh=3, only-if-cached, stale-if-error=4"},
			Directives{NoCache: true, NoStore: true, MaxAge: secs(1), MaxStale: secs(2), MinFresh: secs(3),
				OnlyIfCached: true, StaleIfError: secs(4)}},

		// Case-insensitivity of names.
		{"upper case", []string{"PUBLIC, MAX-AGE=60, No-Store"}, Directives{Public: true, MaxAge: secs(60), NoStore: true}},
		{"mixed case s-maxage", []string{"S-MaxAge=7"}, Directives{SMaxAge: secs(7)}},

		// Several field lines.
		{"two lines", []string{"public", "max-age=60"}, Directives{Public: true, MaxAge: secs(60)}},
		{"three lines, one empty", []string{"no-cache", "", "s-maxage=9"}, Directives{NoCache: true, SMaxAge: secs(9)}},
		{"same max-age on two lines", []string{"max-age=60", "max-age=60"}, Directives{MaxAge: secs(60)}},
		{"different max-age on two lines", []string{"max-age=60", "max-age=30"}, Directives{MaxAge: zero}},

		// Quoted values.
		{"quoted max-age", []string{`max-age="60"`}, Directives{MaxAge: secs(60)}},
		{"quoted s-maxage then more", []string{`s-maxage="5", public`}, Directives{SMaxAge: secs(5), Public: true}},
		{"quoted max-stale", []string{`max-stale="10"`}, Directives{MaxStale: secs(10)}},
		{"quoted empty max-stale is malformed, ignored", []string{`max-stale=""`}, Directives{}},
		{"escaped quote inside an unknown directive", []string{`ext="a\"b, public", max-age=5`}, Directives{MaxAge: secs(5)}},
		{"comma inside quotes of an unknown directive", []string{`ext="no-store, private", public`}, Directives{Public: true}},

		// Field-qualified no-cache and private.
		{"no-cache with two fields, comma in quotes", []string{`no-cache="Set-Cookie, X-Foo"`},
			Directives{NoCacheFields: []string{"Set-Cookie", "X-Foo"}}},
		{"no-cache fields canonicalized", []string{`no-cache="set-cookie,x-foo-bar"`},
			Directives{NoCacheFields: []string{"Set-Cookie", "X-Foo-Bar"}}},
		{"no-cache token form", []string{`no-cache=set-cookie`}, Directives{NoCacheFields: []string{"Set-Cookie"}}},
		{"no-cache fields then more directives", []string{`no-cache="Set-Cookie, X-Foo", max-age=60`},
			Directives{NoCacheFields: []string{"Set-Cookie", "X-Foo"}, MaxAge: secs(60)}},
		{"no-cache fields with empty elements", []string{`no-cache=" , set-cookie,, "`},
			Directives{NoCacheFields: []string{"Set-Cookie"}}},
		{"no-cache fields on two lines accumulate", []string{`no-cache="a"`, `no-cache="b"`},
			Directives{NoCacheFields: []string{"A", "B"}}},
		{"no-cache and no-cache with fields", []string{`no-cache, no-cache="X-A"`},
			Directives{NoCache: true, NoCacheFields: []string{"X-A"}}},
		{"private with fields", []string{`private="x-user-id, Set-Cookie"`},
			Directives{PrivateFields: []string{"X-User-Id", "Set-Cookie"}}},
		{"private fields then public", []string{`private="Authorization", public`},
			Directives{PrivateFields: []string{"Authorization"}, Public: true}},
		{"quoted empty no-cache is unqualified", []string{`no-cache=""`}, Directives{NoCache: true}},
		// NOTE: a list of empty elements is a field list naming no field,
		// so neither Private nor PrivateFields is set, while private=""
		// counts as bare private.
		{"private with only empty elements", []string{`private=","`}, Directives{}},
		{"quoted empty private is unqualified", []string{`private=""`}, Directives{Private: true}},
		{"unterminated quote takes what there is", []string{`no-cache="Set-Cookie`},
			Directives{NoCacheFields: []string{"Set-Cookie"}}},

		// Values over 2^31 seconds.
		{"max-age 2^31-1 kept", []string{"max-age=2147483647"}, Directives{MaxAge: secs(2147483647)}},
		{"max-age 2^31 capped", []string{"max-age=2147483648"}, Directives{MaxAge: capped}},
		{"max-age over int64", []string{"max-age=99999999999999999999999"}, Directives{MaxAge: capped}},
		{"s-maxage over 2^31", []string{"s-maxage=4294967296"}, Directives{SMaxAge: capped}},
		{"max-stale over 2^31", []string{"max-stale=3000000000"}, Directives{MaxStale: capped}},
		{"stale-while-revalidate over 2^31", []string{"stale-while-revalidate=3000000000"}, Directives{StaleWhileRevalidate: capped}},

		// Malformed or conflicting freshness: present with 0 (stale).
		{"max-age not a number", []string{"max-age=abc"}, Directives{MaxAge: zero}},
		{"max-age negative", []string{"max-age=-1"}, Directives{MaxAge: zero}},
		{"max-age fraction", []string{"max-age=1.5"}, Directives{MaxAge: zero}},
		{"max-age plus sign", []string{"max-age=+5"}, Directives{MaxAge: zero}},
		{"max-age empty", []string{"max-age="}, Directives{MaxAge: zero}},
		{"max-age without =", []string{"max-age"}, Directives{MaxAge: zero}},
		{"s-maxage malformed", []string{"s-maxage=1d"}, Directives{SMaxAge: zero}},
		{"max-age conflicting", []string{"max-age=60, max-age=120"}, Directives{MaxAge: zero}},
		{"max-age conflicting stays 0 when repeated", []string{"max-age=60, max-age=120, max-age=60"}, Directives{MaxAge: zero}},
		{"max-age valid then malformed", []string{"max-age=60, max-age=x"}, Directives{MaxAge: zero}},
		{"s-maxage conflicting", []string{"s-maxage=1, s-maxage=2"}, Directives{SMaxAge: zero}},
		{"max-age duplicate same value", []string{"max-age=60, max-age=60"}, Directives{MaxAge: secs(60)}},
		{"s-maxage duplicate same value, one quoted", []string{`s-maxage=60, s-maxage="60"`}, Directives{SMaxAge: secs(60)}},

		// Malformed request deltas are ignored; duplicates take the smaller.
		{"max-stale malformed", []string{"max-stale=abc"}, Directives{}},
		{"max-stale negative", []string{"max-stale=-5"}, Directives{}},
		{"min-fresh malformed", []string{"min-fresh=1.5"}, Directives{}},
		{"min-fresh without value", []string{"min-fresh"}, Directives{}},
		{"stale-while-revalidate malformed", []string{"stale-while-revalidate=x"}, Directives{}},
		{"stale-if-error without value", []string{"stale-if-error"}, Directives{}},
		{"min-fresh malformed keeps earlier", []string{"min-fresh=5, min-fresh=x"}, Directives{MinFresh: secs(5)}},
		{"min-fresh duplicates take the smaller", []string{"min-fresh=10, min-fresh=5"}, Directives{MinFresh: secs(5)}},
		{"max-stale duplicates take the smaller", []string{"max-stale=5", "max-stale=10"}, Directives{MaxStale: secs(5)}},
		{"bare max-stale after a value takes the smaller", []string{"max-stale, max-stale=5"}, Directives{MaxStale: secs(5)}},
		{"bare max-stale after a value keeps the smaller", []string{"max-stale=5, max-stale"}, Directives{MaxStale: secs(5)}},

		// Unknown directives and empty elements.
		{"unknown directives", []string{"foo, bar=baz, community=\"UCI\", public"}, Directives{Public: true}},
		{"unknown only", []string{"x-custom=1"}, Directives{}},
		{"empty elements", []string{", ,public,, ,"}, Directives{Public: true}},
		{"only commas and spaces", []string{" , , \t, "}, Directives{}},
		{"value without a name", []string{"=5, public"}, Directives{Public: true}},
		{"whitespace around elements", []string{"  public ,\tmax-age=60  "}, Directives{Public: true, MaxAge: secs(60)}},
		{"whitespace around =", []string{"max-age = 60"}, Directives{MaxAge: secs(60)}},
		{"prefix of a directive is not it", []string{"no-stores, publicity, max-ages=5"}, Directives{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ParseCacheControl(tt.values)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseCacheControl(%q) =\n\t%+v\nwant\n\t%+v", tt.values, got, tt.want)
			}
		})
	}
}

func TestParseCacheControlDoesNotModifyInput(t *testing.T) {
	in := []string{`no-cache="Set-Cookie", max-age=5`, "public"}
	orig := append([]string(nil), in...)
	ParseCacheControl(in)
	if !reflect.DeepEqual(in, orig) {
		t.Errorf("ParseCacheControl changed its input to %q, want %q", in, orig)
	}
}

func FuzzParseCacheControl(f *testing.F) {
	f.Add("public, max-age=60", "")
	f.Add(`no-cache="Set-Cookie, X-Foo", private="a,b", s-maxage=5`, "max-stale")
	f.Add(`ext="a\"b, public", max-age="5`, `no-cache="`)
	f.Add("max-age=99999999999999999999999, max-stale=2147483648", "min-fresh=-1")
	f.Add(", ,=,,max-age=1, max-age=2", "STALE-WHILE-REVALIDATE=3, stale-if-error")
	f.Add(`private=", ,"`, `no-cache=""`)
	f.Fuzz(func(t *testing.T, line1, line2 string) {
		values := []string{line1, line2}
		d := ParseCacheControl(values)
		for name, v := range map[string]Delta{
			"max-age": d.MaxAge, "s-maxage": d.SMaxAge, "max-stale": d.MaxStale, "min-fresh": d.MinFresh,
			"stale-while-revalidate": d.StaleWhileRevalidate, "stale-if-error": d.StaleIfError,
		} {
			if v.Value < 0 || v.Value > maxDelta {
				t.Errorf("ParseCacheControl(%q): %s = %v, want within [0, %v]", values, name, v.Value, maxDelta)
			}
			if !v.Present && v.Value != 0 {
				t.Errorf("ParseCacheControl(%q): %s = %+v, absent with a value", values, name, v)
			}
		}
		for name, fields := range map[string][]string{"no-cache": d.NoCacheFields, "private": d.PrivateFields} {
			for _, f := range fields {
				if strings.TrimSpace(f) == "" {
					t.Errorf("ParseCacheControl(%q): %s fields %q contain an empty name", values, name, fields)
				}
			}
		}
		// The lines are a list: parsing them joined gives the same result,
		// unless a quoted string left open on the first line swallows the
		// second.
		if strings.Count(line1, `"`) == 0 && strings.Count(line2, `"`) == 0 {
			joined := ParseCacheControl([]string{line1 + "," + line2})
			if !reflect.DeepEqual(joined, d) {
				t.Errorf("ParseCacheControl(%q) = %+v, but joined with a comma = %+v", values, d, joined)
			}
		}
	})
}
