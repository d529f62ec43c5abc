#!/usr/bin/env bash
# Regenerate .sqlx/: the query metadata against which sqlx's `query!` macros check the SQL at
# compile time when SQLX_OFFLINE=true (as scripts/test.sh builds). Run it after changing a query
# or a migration, and commit .sqlx/. Needs Postgres (scripts/services.sh starts it) and psql.
# Does what `cargo sqlx prepare --workspace` of sqlx-cli does, without installing sqlx-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
scripts/services.sh
db=attune_sqlx_prepare
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
for f in migrations/*.sql; do
  psql -h 127.0.0.1 -U postgres -d "$db" -q -v ON_ERROR_STOP=1 -f "$f"
done
rm -rf .sqlx
mkdir .sqlx
# Make the macros expand again in every crate that has queries (service, worker).
touch service/src/*.rs worker/src/*.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/.sqlx" \
  DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" \
  cargo build -q -p attune-service -p attune-worker --lib
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE $db"
echo "[sqlx-prepare] $(ls .sqlx | wc -l) queries in .sqlx/"
