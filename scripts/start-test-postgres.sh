#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the registry tests and print the shell lines
# that point the tests at it:   eval "$(scripts/start-test-postgres.sh)"
# Installs Debian's `postgresql` package when no server binaries are found (needs root and apt-get).
# The data directory lives in a fresh temporary folder; `stop_test_postgres` (printed too) removes it.
set -euo pipefail

find_bindir() {
  local candidate
  for candidate in /usr/lib/postgresql/*/bin; do
    [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" ]] && { echo "$candidate"; return 0; }
  done
  command -v pg_ctl >/dev/null 2>&1 && { dirname "$(command -v pg_ctl)"; return 0; }
  return 1
}

if ! bindir=$(find_bindir); then
  echo "start-test-postgres: no PostgreSQL server found; installing Debian's postgresql package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  bindir=$(find_bindir)
fi

datadir=$(mktemp -d -t lorafleet-pg.XXXXXX)
# The server refuses to run as root; run it as the `postgres` account the package creates.
run_as=()
if [[ $(id -u) == 0 ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$datadir"
  run_as=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"${run_as[@]}" "$bindir/initdb" -D "$datadir/data" -U lorafleet --auth=trust -E UTF8 >"$datadir/initdb.log" 2>&1 \
  || { cat "$datadir/initdb.log" >&2; exit 1; }
"${run_as[@]}" "$bindir/pg_ctl" -D "$datadir/data" -l "$datadir/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $datadir -c fsync=off -c max_connections=200" start >&2 \
  || { cat "$datadir/server.log" >&2; exit 1; }

echo "export LORAFLEET_TEST_POSTGRES_URL='postgresql://lorafleet@127.0.0.1:$port/postgres'"
echo "stop_test_postgres() { ${run_as[*]} '$bindir/pg_ctl' -D '$datadir/data' -m fast stop >/dev/null; rm -rf '$datadir'; }"
echo "start-test-postgres: server on 127.0.0.1:$port, data in $datadir" >&2
