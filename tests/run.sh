#!/usr/bin/env bash
# The project's one test command: on a fresh machine it installs what the tests need, then
# checks formatting and lints and runs every test of the workspace.
#
# Tests need system tools: each is in TOOLS below as "command:debian-package", and this
# script installs the missing ones. The proxy tests create network namespaces and iptables
# rules, so they need root (as CI has).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=(python3:python3 ip:iproute2 iptables:iptables iptables-restore:iptables curl:curl
       redis-server:redis-server redis-cli:redis-tools dig:bind9-dnsutils)

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
else
    echo "rustfmt not installed; skipping the format check" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --locked -- -D warnings
else
    echo "clippy not installed; skipping lints" >&2
fi

cargo test --workspace --locked
