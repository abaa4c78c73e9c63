#!/usr/bin/env bash
# The project's one test command: on a fresh machine it installs what the tests need, then
# checks formatting and lints, runs every fuzz target briefly and every test of the workspace.
#
# Tests need system tools: each is in TOOLS below as "command:debian-package", and this
# script installs the missing ones. The proxy tests create network namespaces and iptables
# rules, so they need root (as CI has).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=(python3:python3 ip:iproute2 iptables:iptables iptables-restore:iptables curl:curl
       redis-server:redis-server redis-cli:redis-tools dig:bind9-dnsutils prlimit:util-linux
       setpriv:util-linux dnsmasq:dnsmasq-base conntrack:conntrack)

missing=()
for entry in "${TOOLS[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing system packages: ${missing[*]} (run as root to install them with apt-get)" >&2
        exit 1
    fi
fi

command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }

if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check
    cargo fmt --manifest-path fuzz/Cargo.toml -- --check
else
    echo "rustfmt not installed; skipping the format check" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --locked -- -D warnings
else
    echo "clippy not installed; skipping lints" >&2
fi

# Every fuzz target (fuzz/) for a few seconds, so a parser that now panics on its seeds or
# on what a short run finds fails here; long runs are `fuzz/run.sh SECONDS`. It needs the
# nightly toolchain, so without one it is skipped (FUZZ_SECONDS=0 skips it too).
fuzz_seconds=${FUZZ_SECONDS:-10}
if [ "$fuzz_seconds" = 0 ]; then
    echo "fuzz: skipped (FUZZ_SECONDS=0)"
elif ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz: skipped: no nightly toolchain (rustup toolchain install nightly)"
else
    bash fuzz/run.sh "$fuzz_seconds"
fi

cargo test --workspace --locked
