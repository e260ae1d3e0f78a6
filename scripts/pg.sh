#!/usr/bin/env bash
# A throwaway PostgreSQL for demos and tests. Nothing here is for production.
#
#   scripts/pg.sh start               init (first time) and start; writes .local/pg.env
#   scripts/pg.sh stop                fast shutdown; a no-op when not running
#   scripts/pg.sh restart-immediate [DOWN_SECS]
#   scripts/pg.sh kill9 [DOWN_SECS]   crash-stop (-m immediate), optionally stay down DOWN_SECS,
#                                     then start again on the same port (for fault tests)
#   scripts/pg.sh destroy             stop and delete the data directory
#   scripts/pg.sh url                 print DATABASE_URL of the running instance
#   scripts/pg.sh status              say whether it runs, where, and on which port
#
# PG_EXTRA_OPTS adds server options at start (e.g. "-c shared_preload_libraries=pg_stat_statements").
#
# Use it from a shell:   scripts/pg.sh start && source .local/pg.env
#
# Where the data lives: $REPO/.local/pg (git-ignored), owned by the `postgres` user when run as
# root (PostgreSQL refuses to run as root). If `postgres` cannot reach that directory (a parent
# directory it may not traverse), the data goes to /tmp/refstream-pg-$UID-<hash of repo path>
# instead and .local/pg.dir records that path. Run as a non-root user, the server runs as you.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$ROOT"

LOCAL="$ROOT/.local"
ENV_FILE="$LOCAL/pg.env"
DIR_FILE="$LOCAL/pg.dir"
DB_NAME=refstream
PG_USER=postgres

log() { printf 'pg.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Hands paths to the server's OS user (only needed when we are root).
give_pg() {
    if is_root; then chown "$PG_USER:" "$@"; fi
}

# Runs a command as the server's OS user (postgres when we are root, else ourselves), from /
# so that a cwd the postgres user cannot read does not matter.
as_pg() {
    if ! is_root; then
        (cd / && "$@")
    elif command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        local cmd
        cmd=$(printf '%q ' "$@")
        (cd / && su "$PG_USER" -s /bin/bash -c "$cmd")
    fi
}

find_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            printf '%s\n' "$d"
            return 0
        fi
    done
    return 1
}

ensure_installed() {
    if BINDIR=$(find_bindir); then
        return 0
    fi
    local sudo=()
    if ! is_root; then
        command -v sudo >/dev/null 2>&1 || die "PostgreSQL is not installed and we are not root (no sudo)"
        sudo=(sudo)
    fi
    log "no initdb under /usr/lib/postgresql/*/bin; installing PostgreSQL:"
    log "+ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
    BINDIR=$(find_bindir) || die "installed postgresql but found no initdb under /usr/lib/postgresql/*/bin"
}

ensure_pg_user() {
    is_root || return 0
    id "$PG_USER" >/dev/null 2>&1 && return 0
    log "creating system user $PG_USER"
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash "$PG_USER"
}

# The base directory: holds data/, sock/, port and postgres.log.
# Known already: from .local/pg.dir (fallback used earlier) or .local/pg.
existing_base() {
    if [ -f "$DIR_FILE" ]; then
        cat "$DIR_FILE"
    else
        printf '%s\n' "$LOCAL/pg"
    fi
}

# Decides (on first start) where the data goes, creates the directory and gives it to postgres.
choose_base() {
    if [ -f "$DIR_FILE" ]; then
        BASE=$(cat "$DIR_FILE")
    else
        BASE="$LOCAL/pg"
        mkdir -p "$BASE"
        give_pg "$BASE"
        if ! as_pg test -w "$BASE" -a -x "$BASE"; then
            local hash
            hash=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
            rmdir "$BASE" 2>/dev/null || true
            BASE="/tmp/refstream-pg-$(id -u)-$hash"
            log "user $PG_USER cannot reach $LOCAL/pg (parent directory permissions); using $BASE"
            mkdir -p "$LOCAL"
            printf '%s\n' "$BASE" >"$DIR_FILE"
        fi
    fi
    mkdir -p "$BASE"
    chmod 700 "$BASE"
    give_pg "$BASE"
    return 0
}

set_paths() {
    DATA="$BASE/data"
    LOGFILE="$BASE/postgres.log"
    PORT_FILE="$BASE/port"
    SOCK="$BASE/sock"
    # Unix socket paths are limited to ~107 bytes; a deep checkout moves the socket to /tmp.
    if [ "${#SOCK}" -gt 80 ]; then
        SOCK="/tmp/refstream-pg-sock-$(id -u)-$(printf '%s' "$BASE" | sha256sum | cut -c1-12)"
    fi
}

is_running() {
    [ -f "$DATA/PG_VERSION" ] || return 1
    as_pg "$BINDIR/pg_ctl" status -D "$DATA" >/dev/null 2>&1
}

port_is_free() {
    python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.close()' "$1" 2>/dev/null
}

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
        return
    fi
    # No python3: probe random high ports for something not answering.
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            printf '%s\n' "$p"
            return
        fi
    done
    die "could not find a free TCP port"
}

url_for() { printf 'postgres://%s@127.0.0.1:%s/%s\n' "$PG_USER" "$1" "$DB_NAME"; }

write_env() {
    local port=$1 url
    url=$(url_for "$port")
    mkdir -p "$LOCAL"
    cat >"$ENV_FILE" <<EOF
# Written by scripts/pg.sh; source it: . .local/pg.env
export PGHOST=127.0.0.1
export PGPORT=$port
export PGUSER=$PG_USER
export PGDATABASE=$DB_NAME
export DATABASE_URL=$url
export REFSTREAM__DATABASE__URL=$url
EOF
}

pg_start_on() {
    local port=$1
    mkdir -p "$SOCK"
    give_pg "$SOCK"
    # pg_ctl -l needs a log file the server user can write.
    touch "$LOGFILE"
    give_pg "$LOGFILE"
    log "starting postgres on 127.0.0.1:$port (data $DATA, log $LOGFILE)"
    # fsync=off and full_page_writes=off only risk data if the machine (kernel) crashes, which
    # a throwaway instance can afford. synchronous_commit stays on on purpose: with it off, a
    # commit acknowledged to the client can still sit in Postgres' own WAL buffers, and
    # `kill9`/`restart-immediate` would then lose committed transactions, which would make the
    # fault tests fail for the wrong reason. With fsync=off a synchronous commit is cheap anyway.
    # wal_init_zero=off: a fresh cluster has no WAL files to recycle, so Postgres creates one
    # per 16 MB of WAL and, by default, fills it with zeros first, holding the WAL write lock
    # while every committing backend waits (30 files in a `make bench` run). A server that has
    # run a while recycles its files instead; off, a new file is created without the zeros.
    # 9>&-: the server must not inherit the lock file descriptor (see lock()), or it would
    # hold the lock for as long as it runs.
    if ! as_pg "$BINDIR/pg_ctl" -w -t 60 -D "$DATA" -l "$LOGFILE" start 9>&- \
        -o "-p $port -k $SOCK -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c wal_init_zero=off -c max_connections=200 ${PG_EXTRA_OPTS:-}" >/dev/null; then
        log "postgres did not start; last lines of $LOGFILE:"
        tail -n 20 "$LOGFILE" >&2 || true
        exit 1
    fi
    printf '%s\n' "$port" >"$PORT_FILE"
}

psql_admin() {
    local port=$1
    shift
    psql -h 127.0.0.1 -p "$port" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 -X -q "$@"
}

ensure_database() {
    local port=$1
    if [ "$(psql_admin "$port" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
        log "creating database $DB_NAME"
        psql_admin "$port" -c "CREATE DATABASE $DB_NAME"
    fi
}

print_env() {
    cat "$ENV_FILE"
    printf '\nDATABASE_URL=%s\n' "$(url_for "$(cat "$PORT_FILE")")"
}

cmd_start() {
    ensure_installed
    ensure_pg_user
    command -v psql >/dev/null 2>&1 || die "psql not found (apt-get install -y postgresql-client)"
    choose_base
    set_paths

    if is_running; then
        [ -f "$PORT_FILE" ] || die "postgres runs from $DATA but $PORT_FILE is missing; run: $0 stop"
        log "already running"
        write_env "$(cat "$PORT_FILE")"
        print_env
        return 0
    fi

    if [ ! -f "$DATA/PG_VERSION" ]; then
        log "initdb $DATA"
        mkdir -p "$DATA"
        give_pg "$DATA"
        chmod 700 "$DATA"
        as_pg "$BINDIR/initdb" -D "$DATA" -A trust -U "$PG_USER" --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
    fi

    # Reuse the previous port when it is still free, so a restarted instance keeps its URL.
    local port=""
    if [ -f "$PORT_FILE" ] && port_is_free "$(cat "$PORT_FILE")"; then
        port=$(cat "$PORT_FILE")
    else
        port=$(free_port)
    fi
    pg_start_on "$port"
    ensure_database "$port"
    write_env "$port"
    print_env
}

# Loads BASE/paths for commands that act on an existing instance; false if none exists.
load_existing() {
    BINDIR=$(find_bindir) || return 1
    BASE=$(existing_base)
    set_paths
    [ -f "$DATA/PG_VERSION" ]
}

cmd_stop() {
    local mode=${1:-fast}
    if ! load_existing || ! is_running; then
        log "not running"
        return 0
    fi
    log "stopping postgres (-m $mode)"
    as_pg "$BINDIR/pg_ctl" -w -D "$DATA" stop -m "$mode" >/dev/null
}

cmd_restart_immediate() {
    local down=${1:-0}
    load_existing || die "no instance; run: $0 start"
    [ -f "$PORT_FILE" ] || die "no recorded port in $PORT_FILE; run: $0 start"
    local port
    port=$(cat "$PORT_FILE")
    cmd_stop immediate
    if [ "$down" != 0 ]; then
        log "staying down for ${down}s"
        sleep "$down"
    fi
    pg_start_on "$port"
    write_env "$port"
    log "back up on 127.0.0.1:$port"
}

cmd_destroy() {
    cmd_stop fast
    local base
    base=$(existing_base)
    BASE=$base
    set_paths
    log "removing $base"
    rm -rf -- "$base"
    if [ "$SOCK" != "$base/sock" ]; then rm -rf -- "$SOCK"; fi
    rm -rf -- "$LOCAL/pg"
    rm -f -- "$ENV_FILE" "$DIR_FILE" "$LOCAL/pg.lock"
}

cmd_url() {
    load_existing || die "no instance; run: $0 start"
    is_running || die "not running; run: $0 start"
    url_for "$(cat "$PORT_FILE")"
}

cmd_status() {
    if ! load_existing; then
        echo "no instance (run: $0 start)"
        return 3
    fi
    if is_running; then
        echo "running: $(url_for "$(cat "$PORT_FILE")") data=$DATA log=$LOGFILE"
    else
        echo "stopped: data=$DATA"
        return 3
    fi
}

# Serialise commands that change the instance (e.g. parallel test runs all calling `start`).
lock() {
    mkdir -p "$LOCAL"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$LOCAL/pg.lock"
        flock 9
    fi
}

case "${1:-}" in
    start | stop | kill9 | restart-immediate | destroy) lock ;;
esac

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop fast ;;
    kill9 | restart-immediate) cmd_restart_immediate "${2:-0}" ;;
    destroy) cmd_destroy ;;
    url) cmd_url ;;
    status) cmd_status ;;
    *)
        sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
