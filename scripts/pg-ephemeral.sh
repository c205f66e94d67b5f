# shellcheck shell=bash
# Source this file, then call `pg_ephemeral_start [VAR]`: it starts a
# throw-away PostgreSQL 15 server (initdb into a temporary directory, a free
# port on loopback), waits for it with pg_isready, exports its URL as VAR
# (default DATABASE_URL) and PG_BINDIR (the server's binaries, pg_dump
# included), and stops every server it started and removes their files
# when the calling shell exits, on failure too. Call it again with another
# VAR for a second server.

PG_EPHEMERAL_DIRS=()

pg_ephemeral_start() {
  local var=${1:-DATABASE_URL}
  local bindir=${PG_BINDIR:-}
  if [ -z "$bindir" ]; then
    for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bindir=$d; done
  fi
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "pg-ephemeral: PostgreSQL server binaries not found; installing postgresql" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bindir=$d; done
  fi
  local PG_EPHEMERAL_DIR
  PG_EPHEMERAL_DIR=$(mktemp -d -t strata-pg.XXXXXX)
  PG_EPHEMERAL_DIRS+=("$PG_EPHEMERAL_DIR")
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local run=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$PG_EPHEMERAL_DIR"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$bindir/initdb" -D "$PG_EPHEMERAL_DIR/data" -U postgres --auth=trust \
    --no-sync -E UTF8 >"$PG_EPHEMERAL_DIR/initdb.log" 2>&1 \
    || { cat "$PG_EPHEMERAL_DIR/initdb.log" >&2; return 1; }
  # One role must give a password, so tests can see a wrong one refused.
  local hba="$PG_EPHEMERAL_DIR/data/pg_hba.conf"
  { echo "host all strata_password_check 127.0.0.1/32 scram-sha-256"; cat "$hba"; } >"$hba.new"
  "${run[@]}" cp "$hba.new" "$hba" && rm -f "$hba.new"
  # Tests create many databases and run many concurrent writers. Commits
  # are not durable unless PG_EPHEMERAL_DURABLE=1 (the server's defaults).
  local fast="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  if [ "${PG_EPHEMERAL_DURABLE:-0}" = 1 ]; then fast=""; fi
  "${run[@]}" "$bindir/pg_ctl" -D "$PG_EPHEMERAL_DIR/data" -l "$PG_EPHEMERAL_DIR/server.log" -w -s \
    -o "-p $port -k $PG_EPHEMERAL_DIR -c listen_addresses=127.0.0.1 -c max_connections=500 -c max_prepared_transactions=20 $fast -c shared_buffers=256MB" \
    start || { cat "$PG_EPHEMERAL_DIR/server.log" >&2; return 1; }
  PG_EPHEMERAL_BINDIR=$bindir
  PG_EPHEMERAL_RUN=("${run[@]}")
  trap pg_ephemeral_stop EXIT
  until "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; do sleep 0.2; done
  export "$var=postgres://postgres@127.0.0.1:$port/postgres"
  export PG_BINDIR=$bindir
  echo "pg-ephemeral: PostgreSQL ready at ${!var}" >&2
}

pg_ephemeral_stop() {
  local dir
  for dir in "${PG_EPHEMERAL_DIRS[@]}"; do
    if [ -d "$dir/data" ]; then
      "${PG_EPHEMERAL_RUN[@]}" "$PG_EPHEMERAL_BINDIR/pg_ctl" -D "$dir/data" -m immediate -s stop || true
    fi
    rm -rf "$dir"
  done
}
