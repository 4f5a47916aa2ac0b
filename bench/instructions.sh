#!/usr/bin/env bash
# Instructions the proxy spends per request, counted by callgrind (valgrind): repeatable on a
# noisy machine, where req/s and CPU time are not. The proxy runs under callgrind in front of
# the built-in emulator; curl sends N1, then (in a second run) N2 GET requests over one
# keep-alive connection; the difference of the two totals over N2 - N1 is the cost of one
# request, start-up and the login cancelled out.
#
# Usage: bench/instructions.sh [BINARY] [N1] [N2]
#   defaults: target/release/creatio-proxy 200 1200
# Needs valgrind and curl (apt-get install valgrind curl). Uses ports 19180, 19181, 19190 on
# 127.0.0.1. Stops what it starts by PID.
set -u
bin=${1:-target/release/creatio-proxy}
n1=${2:-200}
n2=${3:-1200}
work=$(mktemp -d)
emu_port=19181
proxy_port=19180
admin_port=19190
"$bin" emulator --listen "127.0.0.1:$emu_port" > "$work/emulator.log" 2>&1 &
emu=$!
trap 'kill "$emu" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$emu_port/api/HealthCheck/Ping" && break
    sleep 0.1
done
cat > "$work/config.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
[admin]
listen = "127.0.0.1:$admin_port"
[creatio]
url = "http://127.0.0.1:$emu_port"
[auth]
username = "Supervisor"
password = "Supervisor"
[log]
level = "warn"
TOML

# Total instructions of one run of the proxy serving $1 requests.
total() {
    local n=$1
    local out="$work/callgrind.$n"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config "$work/config.toml" \
        > "$work/proxy.$n.log" 2>&1 &
    local proxy=$!
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$admin_port/healthz" && break
        sleep 0.2
    done
    local urls=()
    for _ in $(seq "$n"); do urls+=("http://127.0.0.1:$proxy_port/0/odata/Contact?\$top=1"); done
    curl -s "${urls[@]}" > /dev/null
    kill -TERM "$proxy"
    wait "$proxy"
    callgrind_annotate "$out" 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",", "", $1); print $1}'
}

a=$(total "$n1")
b=$(total "$n2")
if [ -z "$a" ] || [ -z "$b" ]; then
    echo "instructions.sh: no callgrind total (see the logs in $work)" >&2
    trap - EXIT
    kill "$emu" 2>/dev/null
    exit 1
fi
echo "$bin: $a instructions for $n1 requests, $b for $n2: $(( (b - a) / (n2 - n1) )) per request"
