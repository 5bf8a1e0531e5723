#!/usr/bin/env bash
# Starts a throw-away PostgreSQL server on loopback for the storage tests' PostgreSQL variants
# and prints the URL they take (DOMOVOY_TEST_POSTGRES_URL). Prints nothing when PostgreSQL
# cannot be had here; those tests then skip.
set -u
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2 || exit 0
  else
    exit 0
  fi
fi
bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
# A port nobody listens on, so a server left over from another run does not get in the way.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d /tmp/domovoy-pg.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir" && runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres >&2 || exit 0
as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >&2 || exit 0
echo "postgresql+asyncpg://postgres@127.0.0.1:$port/postgres"
