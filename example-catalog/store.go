package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	_ "modernc.org/sqlite" // database/sql driver "sqlite", pure Go

	"github.com/tiercache/tiercache/tiered"
)

// Product is the catalog's unit of sale.
type Product struct {
	ID         int       `json:"id"`
	Name       string    `json:"name"`
	Category   string    `json:"category"`
	PriceCents int       `json:"price_cents"`
	Stock      int       `json:"stock"`
	Version    int       `json:"version"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// Patch is a PUT body: the fields to change, nil for those to keep.
type Patch struct {
	Name       *string `json:"name"`
	Category   *string `json:"category"`
	PriceCents *int    `json:"price_cents"`
	Stock      *int    `json:"stock"`
}

var categories = []string{"books", "garden", "kitchen", "toys", "tools", "music", "sports", "beauty"}

// store is the catalog's database: SQLite (embedded, pure Go) or
// PostgreSQL, through database/sql. Every query counts, is traced, and
// waits Delay first, so that a demo can show what the cache saves.
type store struct {
	db       *sql.DB
	postgres bool
	delay    time.Duration
	// conns, if not nil, holds a token per connection: a query holds one
	// for its delay and its execution, as a slow query holds a
	// connection, so that the database, not the caller, limits throughput.
	conns    chan struct{}
	queries  atomic.Int64
	tracer   trace.Tracer
	duration metric.Float64Histogram
	counter  metric.Int64Counter
}

// openStore opens the database at url: "" for an SQLite file in the
// temporary directory, "sqlite:<path>" for another, or a postgres:// URL.
func openStore(ctx context.Context, url string, delay time.Duration, conns int, tp trace.TracerProvider, mp metric.MeterProvider) (*store, error) {
	s := &store{delay: delay, tracer: tp.Tracer("example-catalog/db")}
	if conns > 0 {
		s.conns = make(chan struct{}, conns)
	}
	driver, dsn := "sqlite", url
	switch {
	case url == "":
		dsn = filepath.Join(os.TempDir(), "tiercache-catalog.sqlite")
	case strings.HasPrefix(url, "sqlite:"):
		dsn = strings.TrimPrefix(url, "sqlite:")
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		driver, s.postgres = "pgx", true
	default:
		return nil, fmt.Errorf("DATABASE_URL %q: want postgres://… or sqlite:<path>", url)
	}
	if driver == "sqlite" {
		// WAL lets readers run beside the writer; busy_timeout makes a
		// writer wait for the lock instead of failing, and immediate
		// transactions take it at BEGIN: a deferred one that reads first
		// cannot wait for it later (SQLITE_BUSY at once).
		dsn = "file:" + dsn + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if driver == "sqlite" {
		db.SetMaxOpenConns(8)
	} else {
		db.SetMaxOpenConns(32)
		db.SetMaxIdleConns(32)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to the database: %w", err)
	}
	s.db = db
	meter := mp.Meter("example-catalog/db")
	if s.duration, err = meter.Float64Histogram("catalog.db.duration", metric.WithUnit("s"),
		metric.WithDescription("Database query duration, the -db-delay included.")); err != nil {
		return nil, err
	}
	if s.counter, err = meter.Int64Counter("catalog.db.queries", metric.WithDescription("Database queries.")); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *store) Close() error { return s.db.Close() }

// q turns the ? placeholders of query into PostgreSQL's $n.
func (s *store) q(query string) string {
	if !s.postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// query runs f as one counted, traced, delayed database call.
func (s *store) query(ctx context.Context, op string, f func(ctx context.Context) error) (err error) {
	ctx, span := s.tracer.Start(ctx, "db."+op, trace.WithSpanKind(trace.SpanKindClient))
	defer func() {
		if err != nil && !errors.Is(err, tiered.ErrNotFound) {
			span.RecordError(err)
		}
		span.End()
	}()
	start := time.Now()
	s.queries.Add(1)
	attrs := metric.WithAttributes(attribute.String("op", op))
	s.counter.Add(ctx, 1, attrs)
	defer func() { s.duration.Record(ctx, time.Since(start).Seconds(), attrs) }()
	if s.conns != nil {
		select {
		case s.conns <- struct{}{}:
			defer func() { <-s.conns }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if s.delay > 0 {
		t := time.NewTimer(s.delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	return f(ctx)
}

const productColumns = "id, name, category, price_cents, stock, version, updated_at_ms"

type scanner interface{ Scan(dest ...any) error }

func scanProduct(r scanner) (Product, error) {
	var p Product
	var ms int64
	if err := r.Scan(&p.ID, &p.Name, &p.Category, &p.PriceCents, &p.Stock, &p.Version, &ms); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return p, tiered.ErrNotFound
		}
		return p, err
	}
	p.UpdatedAt = time.UnixMilli(ms).UTC()
	return p, nil
}

// migrate creates the schema and, if the table is empty, seeds n products.
func (s *store) migrate(ctx context.Context, n int) (seeded int, err error) {
	id := "INTEGER PRIMARY KEY AUTOINCREMENT"
	if s.postgres {
		id = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
	}
	if s.postgres {
		// Replicas starting together would race in CREATE TABLE IF NOT
		// EXISTS (a known PostgreSQL race): one migrates at a time.
		conn, err := s.db.Conn(ctx)
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(7426)"); err != nil {
			return 0, fmt.Errorf("migrate lock: %w", err)
		}
		defer conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(7426)")
	}
	for _, stmt := range []string{
		`CREATE TABLE IF NOT EXISTS products (
			id ` + id + `,
			name TEXT NOT NULL,
			category TEXT NOT NULL,
			price_cents INTEGER NOT NULL,
			stock INTEGER NOT NULL,
			version INTEGER NOT NULL,
			updated_at_ms BIGINT NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS products_category_id ON products (category, id)`,
	} {
		if _, err := s.db.ExecContext(ctx, stmt); err != nil {
			return 0, fmt.Errorf("migrate: %w", err)
		}
	}
	if n <= 0 {
		return 0, nil
	}
	// Counted inside the transaction, which holds the write lock (SQLite
	// transactions begin immediate; PostgreSQL's is locked below): of
	// several processes starting on one database, one seeds.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	if s.postgres {
		if _, err := tx.ExecContext(ctx, "LOCK TABLE products IN EXCLUSIVE MODE"); err != nil {
			return 0, err
		}
	}
	var count int
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM products").Scan(&count); err != nil || count > 0 {
		return 0, err
	}
	now := time.Now().UnixMilli()
	const rows = 500 // per INSERT
	for start := 1; start <= n; start += rows {
		var b strings.Builder
		b.WriteString("INSERT INTO products (id, name, category, price_cents, stock, version, updated_at_ms) VALUES ")
		var args []any
		for i := start; i < start+rows && i <= n; i++ {
			if i > start {
				b.WriteString(",")
			}
			b.WriteString("(?, ?, ?, ?, ?, 1, ?)")
			args = append(args, i, fmt.Sprintf("Product %d", i), categories[i%len(categories)], 100+(i*7919)%9900, i%50, now)
		}
		if _, err := tx.ExecContext(ctx, s.q(b.String()), args...); err != nil {
			return 0, fmt.Errorf("seed: %w", err)
		}
	}
	if s.postgres {
		// Seeded ids were explicit: move the identity past them.
		if _, err := tx.ExecContext(ctx, "SELECT setval(pg_get_serial_sequence('products', 'id'), (SELECT MAX(id) FROM products))"); err != nil {
			return 0, err
		}
	}
	return n, tx.Commit()
}

// product returns one product, or tiered.ErrNotFound.
func (s *store) product(ctx context.Context, id int) (p Product, err error) {
	err = s.query(ctx, "get", func(ctx context.Context) error {
		p, err = scanProduct(s.db.QueryRowContext(ctx, s.q("SELECT "+productColumns+" FROM products WHERE id = ?"), id))
		return err
	})
	return p, err
}

// products returns the products of ids that exist, by id, in one query.
func (s *store) products(ctx context.Context, ids []int) (map[int]Product, error) {
	out := make(map[int]Product, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	err := s.query(ctx, "get_many", func(ctx context.Context) error {
		args := make([]any, len(ids))
		for i, id := range ids {
			args[i] = id
		}
		marks := strings.TrimSuffix(strings.Repeat("?,", len(ids)), ",")
		rows, err := s.db.QueryContext(ctx, s.q("SELECT "+productColumns+" FROM products WHERE id IN ("+marks+")"), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			p, err := scanProduct(rows)
			if err != nil {
				return err
			}
			out[p.ID] = p
		}
		return rows.Err()
	})
	return out, err
}

// ids returns the ids of every product.
func (s *store) ids(ctx context.Context) (ids []int, err error) {
	err = s.query(ctx, "ids", func(ctx context.Context) error {
		rows, err := s.db.QueryContext(ctx, "SELECT id FROM products")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int
			if err := rows.Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return rows.Err()
	})
	return ids, err
}

// list returns a page of products, by id, of one category or of all.
func (s *store) list(ctx context.Context, category string, page, size int) (ps []Product, err error) {
	err = s.query(ctx, "list", func(ctx context.Context) error {
		query, args := "SELECT "+productColumns+" FROM products", []any{}
		if category != "" {
			query += " WHERE category = ?"
			args = append(args, category)
		}
		query += " ORDER BY id LIMIT ? OFFSET ?"
		args = append(args, size, (page-1)*size)
		rows, err := s.db.QueryContext(ctx, s.q(query), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		ps = []Product{}
		for rows.Next() {
			p, err := scanProduct(rows)
			if err != nil {
				return err
			}
			ps = append(ps, p)
		}
		return rows.Err()
	})
	return ps, err
}

// update applies patch to product id and returns it before and after:
// its version grows by exactly one.
func (s *store) update(ctx context.Context, id int, patch Patch) (before, after Product, err error) {
	err = s.query(ctx, "update", func(ctx context.Context) error {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		lock := ""
		if s.postgres {
			lock = " FOR UPDATE"
		}
		if before, err = scanProduct(tx.QueryRowContext(ctx, s.q("SELECT "+productColumns+" FROM products WHERE id = ?"+lock), id)); err != nil {
			return err
		}
		after, err = scanProduct(tx.QueryRowContext(ctx, s.q(`UPDATE products SET
			name = COALESCE(?, name), category = COALESCE(?, category),
			price_cents = COALESCE(?, price_cents), stock = COALESCE(?, stock),
			version = version + 1, updated_at_ms = ?
			WHERE id = ? RETURNING `+productColumns),
			patch.Name, patch.Category, patch.PriceCents, patch.Stock, time.Now().UnixMilli(), id))
		if err != nil {
			return err
		}
		return tx.Commit()
	})
	return before, after, err
}

// create inserts p (its ID, version and time are assigned).
func (s *store) create(ctx context.Context, p Product) (Product, error) {
	var out Product
	err := s.query(ctx, "create", func(ctx context.Context) error {
		var err error
		out, err = scanProduct(s.db.QueryRowContext(ctx, s.q(`INSERT INTO products (name, category, price_cents, stock, version, updated_at_ms)
			VALUES (?, ?, ?, ?, 1, ?) RETURNING `+productColumns), p.Name, p.Category, p.PriceCents, p.Stock, time.Now().UnixMilli()))
		return err
	})
	return out, err
}

// remove deletes product id and returns what it was.
func (s *store) remove(ctx context.Context, id int) (Product, error) {
	var out Product
	err := s.query(ctx, "delete", func(ctx context.Context) error {
		var err error
		out, err = scanProduct(s.db.QueryRowContext(ctx, s.q("DELETE FROM products WHERE id = ? RETURNING "+productColumns), id))
		return err
	})
	return out, err
}
