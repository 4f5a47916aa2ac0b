#!/usr/bin/env bash
# deploy/test-image.sh: build the container image's runtime stage without a registry or a
# daemon, run it, and check what the README promises about it.
#
#   bash deploy/test-image.sh            (as root, as CI runs it)
#
# 1. cargo builds the static release binary (the Dockerfile's builder stage, done on the host
#    because the rust image cannot be pulled here).
# 2. buildah builds the Dockerfile's `runtime` stage FROM scratch, with the host-built binary
#    standing in for the builder stage (--build-context builder=DIR).
# 3. Everything then runs inside a network namespace made for the test, so the image's own
#    ports (5080, 5090) and its HEALTHCHECK are used unchanged and nothing collides with
#    other programs on this machine: the built-in emulator as Creatio, a tiny DNS server, and
#    the image under `buildah run`, which shares the caller's network namespace.
#
# Prints one PASS or FAIL line per check and "test-image: N passed, N failed"; exits 1 on any
# FAIL. Every process it starts is stopped by its PID when it exits.
#
# Environment:
#   CARGO_TARGET_DIR          where cargo builds (default: target/ in the project)
#   CREATIO_PROXY_BIN         use this already-built static binary instead of running cargo
#   IMAGE_ARCHIVE=FILE        also save the image as a docker-archive tar (`docker load -i`)
#   KEEP_IMAGE_STORE=1        keep buildah's storage (its path is printed) for inspection
set -euo pipefail

cd "$(dirname "$0")/.."
project=$PWD
image=localhost/creatio-proxy:test
size_limit=15000000 # bytes: "under 15 MB"

# --- output -------------------------------------------------------------------------------
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS  $*"; }
fail() { failed=$((failed + 1)); echo "FAIL  $*"; }
step() { echo; echo "== $*"; }
usec() { echo "${EPOCHREALTIME//[.,]/}"; } # microseconds since the epoch
now() { usec; }
since() { # seconds since a now(), one decimal
    local d=$(($(usec) - $1))
    printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000))
}

# --- what the test needs --------------------------------------------------------------------
if [[ $EUID -ne 0 ]]; then
    echo "test-image: run as root (it makes a network namespace and runs buildah)" >&2
    exit 1
fi
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v ip >/dev/null || missing+=(iproute2)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v flock >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- state and cleanup ----------------------------------------------------------------------
store=$(mktemp -d "${TMPDIR:-/var/tmp}/creatio-proxy-image.XXXXXX")
ns="creatio-proxy-test-$$"
ctr="creatio-proxy-test-$$"
buildah_=(buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs)
ns_made=""
emulator_pid=""
dns_pid=""
run_pid=""   # the `buildah run` that serves the proxy
proxy_pid="" # the proxy process inside it

stop_pid() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local code=$?
    stop_pid "$proxy_pid"
    stop_pid "$run_pid"
    stop_pid "$dns_pid"
    stop_pid "$emulator_pid"
    wait 2>/dev/null || true
    "${buildah_[@]}" rm --all >/dev/null 2>&1 || true
    [[ -n $ns_made ]] && ip netns delete "$ns" 2>/dev/null
    if [[ ${KEEP_IMAGE_STORE:-} == 1 ]]; then
        echo "test-image: buildah storage kept in $store (buildah --root $store/root --runroot $store/run --storage-driver vfs images)"
    else
        "${buildah_[@]}" rmi --all >/dev/null 2>&1 || true
        rm -rf --one-file-system "$store"
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { ip netns exec "$ns" "$@"; }

# `wait_until SECONDS CMD...` (whole seconds): retries CMD every 0.2 s until it succeeds or time runs out.
wait_until() {
    local deadline=$(($(usec) + $1 * 1000000))
    shift
    until "$@" >/dev/null 2>&1; do
        (($(usec) < deadline)) || return 1
        sleep 0.2
    done
}

# The first descendant of PID whose command name is NAME (buildah run forks twice before the
# program starts).
descendant_named() {
    local queue=("$1") want=$2 parent stat pid comm ppid
    while ((${#queue[@]})); do
        parent=${queue[0]}
        queue=("${queue[@]:1}")
        for stat in /proc/[0-9]*/stat; do
            read -r pid comm _ ppid _ 2>/dev/null <"$stat" || continue
            [[ $ppid == "$parent" ]] || continue
            if [[ $comm == "($want)" ]]; then
                echo "$pid"
                return 0
            fi
            queue+=("$pid")
        done
    done
    return 1
}

# --- 1. the static binary -------------------------------------------------------------------
triple="$(uname -m)-unknown-linux-gnu"
if [[ -n ${CREATIO_PROXY_BIN:-} ]]; then
    binary=$CREATIO_PROXY_BIN
    step "using the binary $binary"
else
    step "cargo build --release --locked --target $triple (static glibc)"
    t=$(now)
    unset CARGO_ENCODED_RUSTFLAGS
    RUSTFLAGS="-C target-feature=+crt-static" \
        flock -o /tmp/cargo-build.lock cargo build --release --locked --target "$triple"
    binary="${CARGO_TARGET_DIR:-$project/target}/$triple/release/creatio-proxy"
    echo "binary built in $(since "$t") s (including any wait for the build lock)"
fi
[[ -x $binary ]] || { fail "no binary at $binary"; exit 1; }
if ldd "$binary" 2>&1 | grep -Eq 'statically linked|not a dynamic executable'; then
    pass "the binary is statically linked"
else
    fail "the binary is dynamically linked: $(ldd "$binary" 2>&1 | tr '\n' ' ')"
fi

# --- 2. the runtime stage -------------------------------------------------------------------
step "buildah bud --target runtime (FROM scratch)"
install -D -m 0755 "$binary" "$store/builder/out/creatio-proxy"
t=$(now)
"${buildah_[@]}" bud --quiet --isolation chroot --format docker --target runtime \
    --build-context "builder=$store/builder" -f Dockerfile -t "$image" . >/dev/null
echo "image built in $(since "$t") s"

"${buildah_[@]}" push --quiet "$image" "docker-archive:$store/image.tar:$image" >/dev/null
size=$(stat -c %s "$store/image.tar")
gz=$(gzip -c "$store/image.tar" | wc -c)
if ((size < size_limit)); then
    pass "image size $size bytes uncompressed (gzip: $gz) < $size_limit"
else
    fail "image size $size bytes uncompressed >= $size_limit"
fi
if [[ -n ${IMAGE_ARCHIVE:-} ]]; then
    cp "$store/image.tar" "$IMAGE_ARCHIVE"
    echo "image saved to $IMAGE_ARCHIVE (docker load -i $IMAGE_ARCHIVE)"
fi

# The image's config, one shell word per line: user, healthcheck, entrypoint + cmd, ports.
"${buildah_[@]}" inspect --type image "$image" >"$store/inspect.json"
config_field() {
    python3 - "$store/inspect.json" "$1" <<'EOF'
import json, sys
config = json.load(open(sys.argv[1]))["Docker"]["config"]
field = sys.argv[2]
if field == "user":
    print(config.get("User", ""))
elif field == "healthcheck":
    test = (config.get("Healthcheck") or {}).get("Test") or []
    print("\n".join(test))
elif field == "argv":
    print("\n".join((config.get("Entrypoint") or []) + (config.get("Cmd") or [])))
elif field == "ports":
    print(" ".join(sorted(config.get("ExposedPorts") or {})))
EOF
}
user=$(config_field user)
if [[ ${user%%:*} == 65532 ]]; then
    pass "image user is $user"
else
    fail "image user is '$user', not 65532"
fi
mapfile -t health < <(config_field healthcheck)
if [[ ${health[0]:-} == CMD && ${health[1]:-} == */creatio-proxy && ${health[2]:-} == health ]]; then
    pass "HEALTHCHECK is exec form, no shell: ${health[*]:1}"
else
    fail "HEALTHCHECK is '${health[*]:-none}', not [\"CMD\", \".../creatio-proxy\", \"health\", ...]"
fi
ports=$(config_field ports)
if [[ $ports == "5080/tcp 5090/tcp" ]]; then
    pass "EXPOSE $ports"
else
    fail "EXPOSE is '$ports'"
fi
mapfile -t argv < <(config_field argv)
echo "entrypoint + cmd: ${argv[*]}"

# --- 3. running it --------------------------------------------------------------------------
step "running the image (buildah run --isolation chroot, network namespace $ns)"
ip netns add "$ns"
ns_made=1
ip -n "$ns" link set lo up

# The container's /etc/hosts names the emulator creatio.hosts.test (and creatio, its Compose
# service name); DNS (the stub on 127.0.0.1:53 in the namespace) answers creatio.dns.test.
# None of these names exists elsewhere.
"${buildah_[@]}" from --quiet --name "$ctr" --add-host creatio.hosts.test:127.0.0.1 \
    --add-host creatio:127.0.0.1 \
    --dns 127.0.0.1 "$image" >/dev/null
run_in() { in_ns "${buildah_[@]}" run --isolation chroot "$@"; }

# The test's config replaces /etc/creatio-proxy, as Compose and Kubernetes mount theirs. The
# proxy stays on loopback: clients share its network namespace, like a pod's containers.
mkdir -p "$store/etc"
printf 'Supervisor\n' >"$store/etc/password"
chown 65532:65532 "$store/etc/password"
chmod 0400 "$store/etc/password"
write_config() {
    cat >"$store/etc/config.toml" <<EOF
[server]
listen = "127.0.0.1:5080"
shutdown_grace = "5s"
unmatched = "$1"

[admin]
listen = "127.0.0.1:5090"

[creatio]
url = "http://creatio.hosts.test:5081"

[auth]
username = "Supervisor"
password_file = "password"   # beside this file: /etc/creatio-proxy/password

[[routes]]
prefix = "/0/odata"

[log]
format = "json"
EOF
}
write_config forward
mount=(-v "$store/etc:/etc/creatio-proxy:ro")

# Root is refused, with the reason.
set +e
out=$(run_in --user 0:0 "${mount[@]}" "$ctr" -- "${argv[@]}" 2>&1)
code=$?
set -e
if [[ $code == 64 && $out == *"refusing to run as root"* ]]; then
    pass "running as root is refused (exit 64: refusing to run as root)"
else
    fail "running as root: exit $code, output: $out"
fi

# The built-in config listens on 0.0.0.0 and so refuses to start until an access rule is
# chosen; with one given through the environment (as `docker run -e` would) it is complete.
set +e
out=$(run_in "$ctr" -- "${argv[@]}" 2>&1)
code=$?
set -e
if [[ $code == 64 && $out == *"server.listen"* ]]; then
    pass "the built-in config refuses 0.0.0.0 without an access rule (exit 64, names server.listen)"
else
    fail "the built-in config without settings: exit $code, output: $out"
fi

# Background processes start with `ip netns exec` itself, not in_ns: a function sent to the
# background runs in a subshell, and $! would name that subshell instead of the program.
ip netns exec "$ns" "$binary" emulator --listen 127.0.0.1:5081 >"$store/emulator.log" 2>&1 </dev/null &
emulator_pid=$!
ip netns exec "$ns" python3 "$project/deploy/test/dns-stub.py" 127.0.0.1 53 creatio.dns.test=127.0.0.1 \
    >"$store/dns.log" 2>&1 </dev/null &
dns_pid=$!
wait_until 10 grep -q 'Creatio emulator' "$store/emulator.log" || fail "the emulator did not start: $(cat "$store/emulator.log")"
wait_until 10 grep -q '^ready' "$store/dns.log" || fail "the DNS stub did not start: $(cat "$store/dns.log")"

set +e
out=$(run_in -e CREATIO_PROXY_CREATIO__URL=http://creatio.hosts.test:5081 \
    -e CREATIO_PROXY_AUTH__USERNAME=Supervisor -e CREATIO_PROXY_AUTH__PASSWORD=Supervisor \
    -e 'CREATIO_PROXY_SERVER__ALLOWED_CLIENTS=["127.0.0.1/32"]' \
    "$ctr" -- "${argv[0]}" check --config /etc/creatio-proxy/config.toml 2>&1)
code=$?
set -e
if [[ $code == 0 && $out == *OK* ]]; then
    pass "the built-in config with settings from the environment logs in (check: OK)"
else
    fail "the built-in config with settings from the environment: exit $code, output: $out"
fi

# Name resolution through DNS: the same check against a name only the DNS stub knows.
set +e
out=$(run_in "${mount[@]}" -e CREATIO_PROXY_CREATIO__URL=http://creatio.dns.test:5081 \
    "$ctr" -- "${argv[0]}" check --config /etc/creatio-proxy/config.toml 2>&1)
code=$?
set -e
if [[ $code == 0 && $out == *OK* ]] && grep -q '^query creatio.dns.test 1$' "$store/dns.log"; then
    pass "a name known only to DNS resolves inside the image (nsswitch dns, resolv.conf)"
else
    fail "DNS name resolution: exit $code, output: $out; DNS stub saw: $(grep query "$store/dns.log" | tr '\n' ' ')"
fi

# The configs shipped in deploy/ load in the image. Compose's logs both identities in, with
# its passwords mounted as Compose mounts secrets; the Kubernetes ConfigMap's config is valid
# (its Creatio host does not resolve here, so check reports it unreachable, exit 1, not 64).
set +e
out=$(run_in -v "$project/deploy/compose/proxy:/etc/creatio-proxy:ro" \
    -v "$project/deploy/compose/secrets/creatio-password:/run/secrets/creatio-password:ro" \
    -v "$project/deploy/compose/secrets/portal-password:/run/secrets/creatio-portal-password:ro" \
    "$ctr" -- "${argv[0]}" check --config /etc/creatio-proxy/config.toml 2>&1)
code=$?
set -e
if [[ $code == 0 && $(grep -c '^OK' <<<"$out") == 2 ]]; then
    pass "deploy/compose config and secrets log both identities in (check: 2 OK)"
else
    fail "deploy/compose config: exit $code, output: $out"
fi
mkdir -p "$store/k8s/etc" "$store/k8s/secrets"
awk '/^  config.toml: \|/ { on = 1; next } on && /^    / { print substr($0, 5); next } on && /^$/ { print; next } on { exit }' \
    deploy/kubernetes/configmap.yaml >"$store/k8s/etc/config.toml"
printf 'x\n' >"$store/k8s/secrets/password"
printf 'x\n' >"$store/k8s/secrets/portal-password"
chmod 0444 "$store/k8s/secrets/"*
set +e
out=$(run_in -v "$store/k8s/etc:/etc/creatio-proxy:ro" -v "$store/k8s/secrets:/run/secrets/creatio-proxy:ro" \
    "$ctr" -- "${argv[0]}" check --config /etc/creatio-proxy/config.toml 2>&1)
code=$?
set -e
if [[ $code == 1 && $out == *"config OK"* ]]; then
    pass "deploy/kubernetes ConfigMap config is valid (check: config OK)"
else
    fail "deploy/kubernetes ConfigMap config: exit $code, output: $out"
fi

# The proxy itself, started the way the image says (entrypoint + cmd, image user).
t=$(now)
ip netns exec "$ns" "${buildah_[@]}" run --isolation chroot "${mount[@]}" "$ctr" -- "${argv[@]}" \
    >"$store/proxy.log" 2>&1 </dev/null &
run_pid=$!
if wait_until 10 descendant_named "$run_pid" creatio-proxy; then
    proxy_pid=$(descendant_named "$run_pid" creatio-proxy)
    uid=$(awk '/^Uid:/ { print $2 }' "/proc/$proxy_pid/status")
    if [[ $uid == 65532 ]]; then
        pass "the proxy runs as uid 65532 by default"
    else
        fail "the proxy runs as uid $uid"
    fi
else
    fail "the proxy process did not start: $(cat "$store/proxy.log")"
fi

# The image's own HEALTHCHECK command, run in the container as the runtime would.
if wait_until 15 run_in "$ctr" -- "${health[@]:1}"; then
    pass "the HEALTHCHECK command answers 0 inside the image ($(since "$t") s after start)"
else
    fail "the HEALTHCHECK command did not succeed within 15 s"
fi

# A request through the proxy reaches the emulator by a name from /etc/hosts, logged in.
body='{"Name":"Image Test Contact"}'
status=$(in_ns curl -sS -o "$store/post.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data "$body" http://127.0.0.1:5080/0/odata/Contact || true)
status2=$(in_ns curl -sS -o "$store/get.json" -w '%{http_code}' \
    "http://127.0.0.1:5080/0/odata/Contact?\$top=10" || true)
if [[ $status == 201 && $status2 == 200 ]] && grep -q 'Image Test Contact' "$store/get.json"; then
    pass "requests through the proxy reach the emulator via /etc/hosts (POST 201, GET 200 returns the record)"
else
    fail "requests through the proxy: POST $status $(head -c 300 "$store/post.json" 2>/dev/null), GET $status2 $(head -c 300 "$store/get.json" 2>/dev/null)"
fi

if run_in "$ctr" -- "${argv[0]}" health --url http://127.0.0.1:5090/readyz >/dev/null 2>&1; then
    pass "/readyz answers 200 (health --url .../readyz inside the image)"
else
    fail "/readyz is not 200: $(in_ns curl -sS http://127.0.0.1:5090/readyz || true)"
fi

metric() { # the value of one series in /metrics, or nothing
    { in_ns curl -sS http://127.0.0.1:5090/metrics 2>/dev/null || true; } |
        awk -v s="$1" '$1 == s { print $2 }'
}
in_ns curl -sS -o "$store/metrics.txt" http://127.0.0.1:5090/metrics || true
logins=$(metric 'creatio_proxy_logins_total{identity="default",outcome="ok"}')
if grep -q '^creatio_proxy_' "$store/metrics.txt" && [[ $logins == 1 ]]; then
    pass "/metrics has $(grep -c '^creatio_proxy_' "$store/metrics.txt") creatio_proxy_ series; logins ok = 1"
else
    fail "/metrics: logins ok = '$logins'; $(head -c 300 "$store/metrics.txt")"
fi

# SIGHUP: unmatched = "deny" takes effect for the next request; the session is kept.
reloaded() { [[ $(metric 'creatio_proxy_config_reloads_total{outcome="applied"}') == 1 ]]; }
if [[ -n $proxy_pid ]]; then
    before=$(in_ns curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:5080/0/rest/NoSuchService/M || true)
    write_config deny
    kill -HUP "$proxy_pid"
    if wait_until 10 reloaded; then
        after=$(in_ns curl -sS -w ' %{http_code}' http://127.0.0.1:5080/0/rest/NoSuchService/M || true)
        still=$(in_ns curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:5080/0/odata/Contact || true)
        logins=$(metric 'creatio_proxy_logins_total{identity="default",outcome="ok"}')
        if [[ $before != 404 && $after == *no_route*404 && $still == 200 && $logins == 1 ]]; then
            pass "SIGHUP reloads the config: unrouted path $before before, 404 no_route after; routed path 200; still 1 login"
        else
            fail "after SIGHUP: unrouted path $before -> $after; routed path $still; logins $logins"
        fi
    else
        fail "SIGHUP: no applied reload in /metrics; log: $(tail -n 5 "$store/proxy.log")"
    fi

    # `creatio-proxy reload` run inside the image (as `docker exec` / `kubectl exec` would):
    # POST /reload on the admin listener, back to the forwarding config.
    write_config forward
    set +e
    out=$(run_in "${mount[@]}" "$ctr" -- /usr/local/bin/creatio-proxy reload 2>&1)
    code=$?
    set -e
    again=$(in_ns curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:5080/0/rest/NoSuchService/M || true)
    if [[ $code == 0 && $out == *"config reloaded"* && $again == "$before" ]]; then
        pass "creatio-proxy reload inside the image: exit 0 ($out); unrouted path $again again"
    else
        fail "creatio-proxy reload inside the image: exit $code, output: $out; unrouted path $again"
    fi

    # SIGTERM: drains and exits 0, and `buildah run` passes that on.
    kill -TERM "$proxy_pid"
    t=$(now)
    set +e
    wait "$run_pid"
    code=$?
    set -e
    run_pid=""
    proxy_pid=""
    if [[ $code == 0 ]] && grep -q '"stopped"' "$store/proxy.log"; then
        pass "SIGTERM: the proxy stops and exits 0 ($(since "$t") s)"
    else
        fail "SIGTERM: exit $code; log: $(tail -n 5 "$store/proxy.log")"
    fi
else
    fail "SIGHUP and SIGTERM not tried: no proxy process"
fi

echo
if ((failed)); then
    echo "--- proxy log (last 20 lines)"
    tail -n 20 "$store/proxy.log" 2>/dev/null || true
fi
echo "test-image: $passed passed, $failed failed"
((failed == 0))
