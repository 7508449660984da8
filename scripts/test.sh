#!/usr/bin/env bash
# The project's test command. On a fresh Debian/Ubuntu machine it sets up everything the suite
# needs, then runs every Rust test:
#
#   scripts/test.sh                 # the whole suite
#   scripts/test.sh -E 'test(cli)'  # extra arguments go to the test runner
#
# Prerequisites, one function each (add new ones to `main` below):
#   ensure_postgres  PostgreSQL accepting connections at $TASKPULSE_TEST_POSTGRES
#                    (default postgres://postgres@127.0.0.1:5432/postgres, trust auth);
#                    installed with apt and started when absent
#   ensure_promtool  Prometheus' promtool (Debian package `prometheus`), no server left running
#   drop_stale_test_databases  leftovers of earlier runs (taskpulse_test_*)
#
# Tests that need an external tool fail instead of skipping: TASKPULSE_REQUIRE_TOOLS=1.
# Idempotent; prints nothing but test output when all is well.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

export DEBIAN_FRONTEND=noninteractive
export TASKPULSE_TEST_POSTGRES="${TASKPULSE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
export TASKPULSE_REQUIRE_TOOLS=1

# ---------------------------------------------------------------------------------------------
# helpers

log() { printf 'test.sh: %s\n' "$*" >&2; }
die() {
    printf 'test.sh: error: %s\n' "$*" >&2
    exit 1
}

# Runs a command as root (directly, or through non-interactive sudo).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n -E "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# Runs a command with its output captured; shows the output only when it fails.
quietly() {
    local out status=0
    out="$(mktemp)"
    "$@" >"$out" 2>&1 </dev/null || status=$?
    if [[ $status -ne 0 ]]; then
        cat "$out" >&2
        rm -f "$out"
        die "failed (exit $status): $*"
    fi
    rm -f "$out"
}

APT_UPDATED=0
# apt-get install without prompts, recommends or starting services (see with_services_blocked).
apt_install() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        quietly as_root apt-get update -q
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    with_services_blocked quietly as_root apt-get install -y -q --no-install-recommends "$@"
}

# Runs a command while Debian maintainer scripts may not start services: a policy-rc.d that
# answers 101 ("action forbidden"). Installing a package that ships a daemon (prometheus) then
# neither leaves a server running nor fails because services can't start in a container. An
# existing policy-rc.d is left alone.
with_services_blocked() {
    local policy=/usr/sbin/policy-rc.d status=0
    if [[ -e $policy ]]; then
        "$@"
        return
    fi
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    # shellcheck disable=SC2064 # expand now: $policy is local
    trap "as_root rm -f $policy" EXIT
    "$@" || status=$?
    as_root rm -f "$policy"
    trap - EXIT
    return "$status"
}

# host:port of a postgres:// URL (defaults 127.0.0.1:5432).
pg_host() {
    local rest="${1#*://}"
    rest="${rest#*@}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    local host="${rest%%:*}"
    echo "${host:-127.0.0.1}"
}
pg_port() {
    local rest="${1#*://}"
    rest="${rest#*@}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    if [[ $rest == *:* ]]; then echo "${rest##*:}"; else echo 5432; fi
}

pg_accepts() {
    pg_isready -q -d "$TASKPULSE_TEST_POSTGRES" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------
# prerequisites

ensure_postgres() {
    local url="$TASKPULSE_TEST_POSTGRES" host port
    host="$(pg_host "$url")"
    port="$(pg_port "$url")"
    local local_server=0
    case "$host" in
    127.0.0.1 | localhost | ::1 | '[::1]') local_server=1 ;;
    esac

    if ! command -v psql >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
        if [[ $local_server -eq 1 ]]; then
            apt_install postgresql
            trust_local_connections
        else
            apt_install postgresql-client
        fi
    fi

    if ! pg_accepts && [[ $local_server -eq 1 ]]; then
        start_local_postgres "$port"
    fi

    local deadline=$((SECONDS + 60))
    until pg_accepts; do
        if ((SECONDS > deadline)); then
            die "PostgreSQL at $host:$port does not accept connections (set TASKPULSE_TEST_POSTGRES to use another server)"
        fi
        sleep 0.5
    done
    if ! psql -w "$url" -Atqc 'SELECT 1' >/dev/null 2>&1; then
        psql -w "$url" -Atqc 'SELECT 1' >&2 || true
        die "PostgreSQL accepts connections but refuses $url (the tests expect trust auth for user postgres)"
    fi
}

# A freshly installed Debian cluster asks for passwords on TCP; the suite connects as
# `postgres` without one, so loopback connections are trusted (test machines only).
trust_local_connections() {
    local hba
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
        [[ -f $hba ]] || continue
        if ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
            as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
            # takes effect at start, or now if the cluster is already running
            local version
            version="$(basename "$(dirname "$(dirname "$hba")")")"
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload >/dev/null 2>&1 || true
        fi
    done
}

start_local_postgres() {
    local port="$1" version cluster
    command -v pg_lsclusters >/dev/null 2>&1 ||
        die "PostgreSQL is not running at 127.0.0.1:$port and this is not a Debian-style install; start it yourself"
    # the cluster configured for the wanted port, else the newest version's `main`
    read -r version cluster < <(pg_lsclusters -h 2>/dev/null | awk -v p="$port" '$3 == p { print $1, $2; exit }') || true
    if [[ -z ${version:-} ]]; then
        version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
        cluster=main
    fi
    [[ -n $version ]] || die "PostgreSQL is installed but has no cluster (pg_createcluster)"
    log "starting PostgreSQL $version/$cluster"
    if ! as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start >/dev/null 2>&1; then
        # already starting, or a stale pid file: the status decides, else show the error
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" status >/dev/null 2>&1 ||
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start
    fi
}

ensure_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        return
    fi
    local running_before=0
    pgrep -x prometheus >/dev/null 2>&1 && running_before=1
    apt_install prometheus
    command -v promtool >/dev/null 2>&1 || die "installed prometheus but promtool is not on PATH"
    # Belt and braces: if the package started a server anyway (a host without policy-rc.d
    # support), stop it and keep it from starting at boot. Only what the install started.
    if [[ $running_before -eq 0 ]] && pgrep -x prometheus >/dev/null 2>&1; then
        log "stopping the prometheus server the package started"
        if [[ -d /run/systemd/system ]]; then
            as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
        else
            as_root service prometheus stop >/dev/null 2>&1 || true
        fi
    fi
}

# Earlier runs that were killed leave their databases behind. Names are
# taskpulse_test_<pid>_<n>_<ms>; a database whose process is still alive belongs to a run in
# progress (another checkout on this machine) and is kept, and one still in use can't be
# dropped without FORCE, which is not used.
drop_stale_test_databases() {
    local url="$TASKPULSE_TEST_POSTGRES" name pid
    local names
    names="$(psql -w "$url" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'taskpulse\_test\_%'")"
    for name in $names; do
        pid="$(cut -d_ -f3 <<<"$name")"
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            continue
        fi
        psql -w "$url" -Atqc "DROP DATABASE IF EXISTS \"$name\"" >/dev/null 2>&1 || true
    done
}

# ---------------------------------------------------------------------------------------------
# the run

run_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        # one process per test, one closing summary line for the whole suite
        cargo nextest run --all-targets --no-fail-fast "$@"
    else
        log "cargo-nextest not found; using cargo test (cargo install --locked cargo-nextest for one summary)"
        cargo test --all-targets --no-fail-fast "$@"
    fi
}

main() {
    command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH (install Rust with rustup)"
    ensure_postgres
    ensure_promtool
    drop_stale_test_databases
    run_tests "$@"
}

main "$@"
