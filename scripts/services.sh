#!/usr/bin/env bash
# Make sure the service's backing stores answer: PostgreSQL on 127.0.0.1:5432 and Redis on
# 127.0.0.1:6379. Starts them when installed but stopped; installs them (Debian packages) when
# missing. Does nothing when both already answer. Used by scripts/test.sh and scripts/service.sh.
set -euo pipefail
log() { printf '[services] %s\n' "$*" >&2; }
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
apt_updated=""
apt_install() {
  [[ -n "$apt_updated" ]] || { $SUDO apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
# Plain TCP probes, so neither psql nor redis-cli is needed to check.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
redis_up() {
  port_open 6379 || return 1
  local reply=""
  exec 3<>/dev/tcp/127.0.0.1/6379 || return 1
  printf 'PING\r\n' >&3
  read -r -t 2 reply <&3 || true
  exec 3>&-
  [[ "$reply" == +PONG* ]]
}
wait_for() { for _ in $(seq 1 60); do "$@" && return 0; sleep 0.5; done; return 1; }

# --- PostgreSQL ----------------------------------------------------------------------------
if ! port_open 5432; then
  if ! command -v pg_ctlcluster >/dev/null || [[ -z "$(ls /etc/postgresql 2>/dev/null)" ]]; then
    log "installing PostgreSQL (Debian packages postgresql, postgresql-client)"
    apt_install postgresql postgresql-client
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  log "starting PostgreSQL $ver (cluster main)"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_for port_open 5432 || { log "PostgreSQL does not answer on 127.0.0.1:5432"; exit 1; }
fi
# The service connects as postgres without a password over TCP. A fresh Debian cluster asks for
# one: on such a local development/CI machine, allow loopback connections without it.
if command -v psql >/dev/null && ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  if [[ -n "$ver" && -w "$hba" || -n "$SUDO" ]]; then
    log "allowing passwordless loopback connections in $hba (local development cluster)"
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
    sleep 1
  fi
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null ||
    { log "cannot connect as postgres@127.0.0.1 without a password; set DATABASE_URL"; exit 1; }
fi

# --- Redis ---------------------------------------------------------------------------------
if ! redis_up; then
  if ! command -v redis-server >/dev/null; then
    log "installing Redis (Debian package redis-server)"
    apt_install redis-server
  fi
  if ! redis_up; then
    log "starting Redis (nothing kept on disk)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no >/dev/null
    wait_for redis_up || { log "Redis does not answer on 127.0.0.1:6379"; exit 1; }
  fi
fi
log "ok: PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379"
