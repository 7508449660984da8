#!/usr/bin/env bash
# Fuzzing of every parser that takes outside bytes, with cargo-fuzz (libFuzzer + AddressSanitizer).
# Targets (fuzz/fuzz_targets/): update_body (JSON object/array), update_ndjson, webhook
# (Conductor TaskNotification), task_result (the proxy's TaskResult reading), poll_response
# (Conductor poll / update-v2 answers). Seed corpus in fuzz/corpus/<target>/ (kept small).
#
#   scripts/fuzz.sh build          # build all targets (installs cargo-fuzz if missing); for CI
#   scripts/fuzz.sh run [RUNS]     # each target, one at a time, RUNS executions (default 10000000)
#   scripts/fuzz.sh cmin           # merge what `run` found into the committed corpus, minimized
#
# Only stable Rust is needed: cargo-fuzz's nightly flags are allowed with RUSTC_BOOTSTRAP=1.
# `run` fails on the first crash, panic, timeout (> 10 s per input), allocation over
# MALLOC_MB (default 128) or RSS over RSS_MB (default 512); inputs are at most MAX_LEN bytes
# (default 65536). The reproducer lands in fuzz/artifacts/<target>/; replay it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`. New corpus entries go to
# fuzz/target/corpus/<target>/ (ignored), never into the committed corpus; TARGETS="a b" picks
# targets.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export RUSTC_BOOTSTRAP=1
TARGETS="${TARGETS:-update_body update_ndjson webhook task_result poll_response}"
MAX_LEN="${MAX_LEN:-65536}"
RSS_MB="${RSS_MB:-512}"
MALLOC_MB="${MALLOC_MB:-128}"
# A smaller ASan quarantine than the default 256 MB, so RSS_MB measures the parsers, not ASan.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=32}"

ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "fuzz: installing cargo-fuzz" >&2
        cargo install cargo-fuzz --locked
    fi
}

build() {
    ensure_cargo_fuzz
    cargo fuzz build
}

run() {
    local runs="${1:-10000000}" t
    build
    for t in $TARGETS; do
        echo "fuzz: $t, $runs runs" >&2
        mkdir -p "fuzz/target/corpus/$t"
        cargo fuzz run "$t" "fuzz/target/corpus/$t" "fuzz/corpus/$t" -- \
            -runs="$runs" -max_len="$MAX_LEN" -rss_limit_mb="$RSS_MB" \
            -malloc_limit_mb="$MALLOC_MB" -timeout=10 -dict=fuzz/json.dict \
            -print_final_stats=1
    done
}

cmin() {
    local t
    build
    for t in $TARGETS; do
        mkdir -p "fuzz/target/corpus/$t"
        # Only inputs under KEEP_BYTES (default 2048) are kept: the committed corpus stays small.
        find "fuzz/target/corpus/$t" -type f -size -"${KEEP_BYTES:-2048}"c \
            -exec cp -n {} "fuzz/corpus/$t"/ \;
        # Edge coverage only (-use_counters=0): a few hundred files per target, not thousands.
        cargo fuzz cmin "$t" "fuzz/corpus/$t" -- -max_len="$MAX_LEN" -use_counters=0
    done
    du -sh --apparent-size fuzz/corpus
}

case "${1:-}" in
    build) build ;;
    run) run "${2:-}" ;;
    cmin) cmin ;;
    *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
