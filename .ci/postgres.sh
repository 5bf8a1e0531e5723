#!/usr/bin/env bash
# A throw-away PostgreSQL server on loopback for the storage tests' PostgreSQL variants.
#   bash .ci/postgres.sh start      prints the URL the tests take (DOMOVOY_TEST_POSTGRES_URL)
#                                   and, on a second line, the server's folder; prints nothing
#                                   when PostgreSQL cannot be had here (those tests then skip)
#   bash .ci/postgres.sh stop DIR   stops exactly the server in DIR and removes DIR: other
#                                   runs' servers on the same machine are left alone
set -u
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_bin() { dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"; }

if [ "${1:-}" = stop ]; then
  dir=${2:-}
  case "$dir" in
    /tmp/domovoy-pg.*) ;;
    *) echo "postgres.sh: $dir is not a server folder this script made" >&2; exit 1 ;;
  esac
  # From a folder the postgres user may enter (the run's own folder may be private).
  (cd / && as_pg "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w stop >&2)
  status=$?
  rm -rf "$dir"
  exit $status
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2 || exit 0
  else
    exit 0
  fi
fi
bin=$(pg_bin)
# A port nobody listens on, so a server left over from another run does not get in the way.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d /tmp/domovoy-pg.XXXXXX)
if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; fi
if ! as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres >&2 ||
  ! as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >&2; then
  rm -rf "$dir"
  exit 0
fi
echo "postgresql+asyncpg://postgres@127.0.0.1:$port/postgres"
echo "$dir"
