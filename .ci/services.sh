#!/usr/bin/env bash
# Installs and starts what the integration tests need: a Docker engine, Redis, Postgres,
# nginx, wrk, promtool and Chromium (the dashboard's browser tests, driven by playwright-core). Idempotent: reuses what already answers. Writes the addresses
# to .ci/.env, which .ci/run (and a developer's shell) sources.
set -euo pipefail
cd "$(dirname "$0")/.."
env_file=.ci/.env
: > "$env_file"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v redis-server >/dev/null || need+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Docker engine
if ! docker version >/dev/null 2>&1; then
  (dockerd >/tmp/forge-dockerd.log 2>&1 &)
  for _ in $(seq 1 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
  docker version >/dev/null 2>&1 || { echo "dockerd did not start"; tail -n 20 /tmp/forge-dockerd.log; exit 1; }
  echo "started: docker"
else
  echo "reused: docker"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Services an earlier run on this machine started (their ports are kept in /tmp).
state=/tmp/forge-ci-services.env
prev_redis=""; prev_pg=""
if [ -f "$state" ]; then . "$state"; prev_redis=${REDIS_PORT:-}; prev_pg=${PG_PORT:-}; fi

# Redis
if redis-cli -p 6379 ping >/dev/null 2>&1; then
  redis_port=6379; echo "reused: redis on 6379"
elif [ -n "$prev_redis" ] && redis-cli -p "$prev_redis" ping >/dev/null 2>&1; then
  redis_port=$prev_redis; echo "reused: redis on $prev_redis"
else
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "started: redis on $redis_port"
fi
echo "FORGE_TEST_REDIS_URL=redis://127.0.0.1:$redis_port" >> "$env_file"

# Postgres (a throwaway cluster owned by the postgres user, trust auth on loopback)
pgbin=/usr/lib/postgresql/15/bin
if pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && psql "postgres://postgres@127.0.0.1:5432/postgres" -tAc 'select 1' >/dev/null 2>&1; then
  pg_port=5432; echo "reused: postgres on 5432"
elif [ -n "$prev_pg" ] && psql "postgres://postgres@127.0.0.1:$prev_pg/postgres" -tAc 'select 1' >/dev/null 2>&1; then
  pg_port=$prev_pg; echo "reused: postgres on $prev_pg"
else
  pg_port=$(free_port)
  pgdata=/tmp/forge-ci-pg-$pg_port
  rm -rf "$pgdata"; mkdir -p "$pgdata"; chown postgres:postgres "$pgdata"
  su postgres -c "$pgbin/initdb -D $pgdata -U postgres --auth=trust >/dev/null"
  su postgres -c "$pgbin/pg_ctl -D $pgdata -o '-p $pg_port -k /tmp -c listen_addresses=127.0.0.1' -l $pgdata/log start >/dev/null"
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p "$pg_port" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "started: postgres on $pg_port"
fi
echo "FORGE_TEST_PG_URL=postgres://postgres@127.0.0.1:$pg_port/postgres" >> "$env_file"
printf 'REDIS_PORT=%s\nPG_PORT=%s\n' "$redis_port" "$pg_port" > "$state"

# Runtime images (nothing can be pulled here: built from this machine's bun and Debian packages)
if [ -f src/cli/images.ts ]; then
  node_modules/.bin/bun src/cli/main.ts images build all >/tmp/forge-images.log 2>&1 || { echo "image build failed"; tail -n 30 /tmp/forge-images.log; exit 1; }
  echo "ok: runtime images"
fi
