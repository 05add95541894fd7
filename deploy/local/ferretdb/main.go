// Command ferretdb runs FerretDB v1 through its embeddable package.
//
// `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` builds a binary that panics at
// start: the module proxy's copy of the module lacks build/version/version.txt, which the upstream
// command requires. The embeddable package skips that check, so this wrapper is the supported way
// to run a module-proxy build locally.
package main

import (
	"context"
	"flag"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // served only with --debug-addr
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	handler := flag.String("handler", "sqlite", "backend handler: sqlite or postgresql")
	sqliteURL := flag.String("sqlite-url", "file:data/", "SQLite URI (a directory) for the sqlite handler")
	pgURL := flag.String("postgresql-url", "", "PostgreSQL URL for the postgresql handler")
	level := flag.String("log-level", "warn", "log level: debug, info, warn, error")
	debugAddr := flag.String("debug-addr", "", "serve Go's /debug/pprof on this address (off when empty)")
	flag.Parse()

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		slog.Error("bad --log-level", "error", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:      ferretdb.ListenerConfig{TCP: *listen},
		Logger:        logger,
		Handler:       *handler,
		SQLiteURL:     *sqliteURL,
		PostgreSQLURL: *pgURL,
	})
	if err != nil {
		logger.Error("cannot start FerretDB", "error", err)
		os.Exit(1)
	}

	if *debugAddr != "" {
		go func() {
			// Profiling the local database under a benchmark: go tool pprof http://ADDR/debug/pprof/profile
			if err := http.ListenAndServe(*debugAddr, nil); err != nil {
				logger.Error("debug listener stopped", "error", err)
			}
		}()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger.Info("FerretDB listening", "addr", *listen, "handler", *handler)
	if err := f.Run(ctx); err != nil {
		logger.Error("FerretDB stopped", "error", err)
		os.Exit(1)
	}
}
