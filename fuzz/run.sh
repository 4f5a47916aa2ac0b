#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after the other, and prints per target the
# executions, the corpus size and the crashes. See docs/testing.md, "Fuzzing".
#
#   fuzz/run.sh [SECONDS] [TARGET...]     SECONDS per target (default 60); all targets by default
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The targets are built
# once, without a sanitizer (the proxy forbids unsafe code: panics and the invariants'
# assertions are what the targets find), with debug assertions and overflow checks.
# FUZZ_BUILD_PREFIX is put before the build command, e.g. "flock /tmp/cargo-build.lock" on a
# machine where builds take turns.
#
# Inputs: fuzz/seeds/<target> (committed, hand-written) and fuzz/corpus/<target> (what earlier
# runs found; not committed). New inputs go to fuzz/corpus/<target>, crashes to
# fuzz/artifacts/<target>. The script exits 1 when a target crashed.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
case "$seconds" in
'' | *[!0-9]*)
    echo "usage: fuzz/run.sh [SECONDS] [TARGET...]" >&2
    exit 2
    ;;
esac
all=(canonical_path route_table cookie_jar login_answer token_answer config request_head answer)
if (($#)); then targets=("$@"); else targets=("${all[@]}"); fi

# shellcheck disable=SC2086 # the prefix is a command and its arguments
${FUZZ_BUILD_PREFIX:-} cargo +nightly fuzz build --sanitizer none

host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin="target/$host/release"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

failed=0
rows=()
for t in "${targets[@]}"; do
    [[ -x "$bin/$t" ]] || {
        echo "no fuzz target $t (targets: ${all[*]})" >&2
        exit 2
    }
    mkdir -p "corpus/$t" "artifacts/$t"
    before="$(find "artifacts/$t" -type f | wc -l)"
    # Per input: 10 s, except whole requests (two exchanges of up to 3 s and 10 s).
    timeout=10
    [[ "$t" == request_head ]] && timeout=30
    dict=()
    [[ -f "dicts/$t.dict" ]] && dict=("-dict=dicts/$t.dict")
    echo "== $t: ${seconds}s"
    status=0
    started=$SECONDS
    "$bin/$t" "corpus/$t" "seeds/$t" "${dict[@]}" \
        -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$logs/$t.log" 2>&1 || status=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)"
    corpus="$(grep -o 'corp: [0-9]*' "$logs/$t.log" | tail -1 | sed 's/corp: //')"
    crashes=$(($(find "artifacts/$t" -type f | wc -l) - before))
    if ((status != 0)) && ((crashes == 0)); then
        # libFuzzer failed without writing an artifact (a crash in start-up, a bad flag).
        crashes=1
    fi
    rows+=("$(printf '%-16s %8s %12s %8s %8s' "$t" "$((SECONDS - started))" "${execs:-?}" "${corpus:-?}" "$crashes")")
    if ((crashes > 0)); then
        failed=1
        echo "-- $t crashed (libFuzzer stops at the first crash):" >&2
        grep -A6 'panicked at' "$logs/$t.log" | grep -v '^ *[0-9]*: \|^ *at ' >&2 || tail -20 "$logs/$t.log" >&2
        grep 'Test unit written to' "$logs/$t.log" >&2 || true
    fi
done

echo
printf '%-16s %8s %12s %8s %8s\n' target seconds executions corpus crashes
printf '%s\n' "${rows[@]}"
exit "$failed"
