#!/usr/bin/env bash
# A throwaway PostgreSQL server for modelhopper's store tests: local only, no password, no fsync.
#
#   eval "$(scripts/start_postgres.sh)"          # start in a new temp folder, export the URL
#   scripts/start_postgres.sh start /tmp/mh-pg    # start with its data in that folder
#   scripts/start_postgres.sh stop /tmp/mh-pg     # stop it (and remove the folder)
#
# Start prints shell lines to eval:
#   export MODELHOPPER_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:<port>/modelhopper_test
#   export MODELHOPPER_TEST_POSTGRES_DIR=<folder>
# The server listens on 127.0.0.1 at a free port and on a unix socket in the folder. Run as
# root, it runs as the 'postgres' user (initdb refuses root). Needs the PostgreSQL server
# binaries: apt-get install postgresql (Debian), found on PATH or in /usr/lib/postgresql/*/bin.
set -euo pipefail

die() { echo "start_postgres.sh: $*" >&2; exit 1; }

pg_bin() {
  # Resolve links: a lone initdb on PATH may point into the folder that holds createdb.
  if command -v initdb >/dev/null 2>&1; then dirname "$(readlink -f "$(command -v initdb)")"; return; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$found" ] || die "PostgreSQL server binaries (initdb, pg_ctl) not found; install them: apt-get install postgresql"
  echo "$found"
}

# Run a command as the server's owner: 'postgres' when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# A port the OS has just handed out, so free (PYTHON: the interpreter to ask, if not python3).
free_port() {
  "${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir="${1:-}" bin port
  bin=$(pg_bin)
  if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/modelhopper-pg-XXXXXX); fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' user to run the server as; install postgresql"
    chown postgres: "$dir"
  fi
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty; give an empty or new folder"
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
    --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  port=$(free_port)
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || { cat "$dir/server.log" >&2; die "the server did not start"; }
  # From here on, a failure stops the server: no process is left behind.
  trap 'as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1' ERR
  as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres modelhopper_test
  trap - ERR
  echo "export MODELHOPPER_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$port/modelhopper_test"
  echo "export MODELHOPPER_TEST_POSTGRES_DIR=$dir"
}

stop() {
  local dir="${1:-}"
  [ -n "$dir" ] || die "usage: start_postgres.sh stop DIR"
  [ -d "$dir/data" ] || die "$dir has no server data (data/)"
  as_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
  rm -rf "$dir"
}

case "${1:-start}" in
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  /*|./*|../*) start "$1" ;;  # a folder: start there
  *) die "usage: start_postgres.sh [start [DIR] | stop DIR]" ;;
esac
