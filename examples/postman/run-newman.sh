#!/usr/bin/env bash
# Runs the Postman collection with newman against `creatio-proxy demo` (the built-in Creatio
# emulator with the proxy in front of it), then stops the demo. Exits with newman's code.
#
#   examples/postman/run-newman.sh [BINARY] [NEWMAN_ARGS...]
#
# BINARY: the creatio-proxy binary. Default: $CREATIO_PROXY_BIN, else target/debug/creatio-proxy
#         (what `cargo test` builds). Arguments after it go to `newman run` as they are, e.g.
#         `--reporters cli,junit --reporter-junit-export newman.xml`.
#
# Environment:
#   NEWMAN_DIR       where newman is installed (default: ~/.cache/creatio-proxy/newman-<version>)
#   DEMO_LISTEN      address for the demo proxy (default 127.0.0.1:0: the system picks a free port)
#   READY_TIMEOUT    seconds to wait for the demo to listen (default 30)
#
# Needs Node.js 16 or later and npm. newman comes from the npm registry the first time; later
# runs reuse it.
set -euo pipefail

NEWMAN_VERSION=6.2.2

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

# Microseconds since the epoch: EPOCHREALTIME (bash 5), else whole seconds from date.
now_us() {
    if [[ -n ${EPOCHREALTIME:-} ]]; then
        echo "${EPOCHREALTIME/[.,]/}"
    else
        echo "$(($(date +%s) * 1000000))"
    fi
}
started_us=$(now_us)

say() { printf 'run-newman: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

elapsed() {
    awk -v us=$(($(now_us) - started_us)) 'BEGIN { printf "%.1f s", us / 1e6 }'
}

# --- arguments -------------------------------------------------------------------------------

bin=${CREATIO_PROXY_BIN:-$root/target/debug/creatio-proxy}
if [[ $# -gt 0 && $1 != -* ]]; then
    bin=$1
    shift
fi
newman_args=("$@")
[[ -x $bin ]] || die "no creatio-proxy binary at $bin: run 'cargo build' (or 'cargo test') first, or pass its path"

listen=${DEMO_LISTEN:-127.0.0.1:0}
ready_timeout=${READY_TIMEOUT:-30}

# --- newman ----------------------------------------------------------------------------------

command -v node >/dev/null || die "node is missing: newman needs Node.js 16 or later"
command -v npm >/dev/null || die "npm is missing: it installs newman"
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 16)) || die "node $(node --version) is too old: newman $NEWMAN_VERSION needs Node.js 16 or later"

newman_dir=${NEWMAN_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/creatio-proxy/newman-$NEWMAN_VERSION}
newman=$newman_dir/node_modules/.bin/newman
if [[ $("$newman" --version 2>/dev/null || true) != "$NEWMAN_VERSION" ]]; then
    say "installing newman $NEWMAN_VERSION into $newman_dir"
    mkdir -p "$newman_dir"
    npm install --prefix "$newman_dir" --no-save --no-package-lock --no-audit --no-fund \
        --no-update-notifier --loglevel=error "newman@$NEWMAN_VERSION" >&2 \
        || die "npm could not install newman@$NEWMAN_VERSION into $newman_dir"
    [[ $("$newman" --version 2>/dev/null || true) == "$NEWMAN_VERSION" ]] \
        || die "newman $NEWMAN_VERSION is still missing from $newman_dir after npm install"
fi

# --- the demo --------------------------------------------------------------------------------

logs=$(mktemp -d "${TMPDIR:-/tmp}/creatio-proxy-newman.XXXXXX")
demo_pid=

show_demo_logs() {
    say "demo stdout ($logs/demo.out):"
    sed 's/^/  | /' "$logs/demo.out" >&2 || true
    say "demo stderr ($logs/demo.err):"
    sed 's/^/  | /' "$logs/demo.err" >&2 || true
}

# shellcheck disable=SC2329 # run by the EXIT trap below
stop_demo() {
    local rc=$?
    # Only the script itself cleans up, never a subshell that might run this trap too.
    [[ ${BASHPID:-$$} == "$$" ]] || return "$rc"
    if [[ -n $demo_pid ]] && kill -0 "$demo_pid" 2>/dev/null; then
        kill -TERM "$demo_pid" 2>/dev/null || true
        # The demo stops on SIGTERM at once; give it 5 s before forcing it.
        for _ in $(seq 50); do
            kill -0 "$demo_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$demo_pid" 2>/dev/null; then
            say "the demo (pid $demo_pid) ignored SIGTERM for 5 s; killing it"
            kill -KILL "$demo_pid" 2>/dev/null || true
        fi
        wait "$demo_pid" 2>/dev/null || true
    fi
    if ((rc == 0)); then
        rm -rf "$logs"
    else
        say "logs kept in $logs"
    fi
    say "finished in $(elapsed) (exit $rc)"
}
trap stop_demo EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting $bin demo --listen $listen"
# Created here, not by the background job's redirections, so the poll below never races them.
: >"$logs/demo.out"
: >"$logs/demo.err"
"$bin" demo --listen "$listen" >"$logs/demo.out" 2>"$logs/demo.err" &
demo_pid=$!

# The demo prints the address it really bound (it falls back to a free port when the one asked
# for is busy) on a line like "  proxy:   http://127.0.0.1:5080   (...)". Poll for that line,
# then for the port to accept a connection.
proxy_url=
deadline=$((SECONDS + ready_timeout))
while :; do
    if ! kill -0 "$demo_pid" 2>/dev/null; then
        wait "$demo_pid" && demo_rc=0 || demo_rc=$?
        demo_pid=
        show_demo_logs
        die "the demo exited (code $demo_rc) before it was ready"
    fi
    if [[ -z $proxy_url ]]; then
        while IFS= read -r line; do
            if [[ $line =~ ^[[:space:]]*proxy:[[:space:]]*(http://[^[:space:]]+) ]]; then
                proxy_url=${BASH_REMATCH[1]}
                break
            fi
        done <"$logs/demo.out"
    fi
    if [[ -n $proxy_url ]]; then
        hostport=${proxy_url#http://}
        host=${hostport%:*} port=${hostport##*:}
        host=${host#[} host=${host%]}
        # Opens (and at once closes) a TCP connection; fails while nothing listens.
        if : 2>/dev/null 3<>"/dev/tcp/$host/$port"; then
            break
        fi
    fi
    if ((SECONDS >= deadline)); then
        show_demo_logs
        if [[ -z $proxy_url ]]; then
            die "the demo printed no 'proxy:' line within ${ready_timeout} s (READY_TIMEOUT)"
        fi
        die "the demo said it listens on $proxy_url, but nothing accepted a connection there within ${ready_timeout} s"
    fi
    sleep 0.1
done
say "demo ready at $proxy_url (pid $demo_pid), $(elapsed) into the run"

# --- newman run ------------------------------------------------------------------------------

set +e
"$newman" run "$here/creatio-proxy.postman_collection.json" \
    --environment "$here/creatio-proxy.postman_environment.json" \
    --env-var "proxy=$proxy_url" \
    --timeout-request 30000 \
    --timeout 300000 \
    ${newman_args[@]+"${newman_args[@]}"}
newman_rc=$?
set -e

if ((newman_rc != 0)); then
    say "newman failed (exit $newman_rc)"
    show_demo_logs
elif [[ -s $logs/demo.err ]]; then
    say "the demo wrote to stderr:"
    sed 's/^/  | /' "$logs/demo.err" >&2
fi
exit "$newman_rc"
