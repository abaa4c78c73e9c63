#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a bounded time and prints, per target, the
# inputs executed, the seconds spent and the crashes found. Exits non-zero on a crash.
#
#   fuzz/run.sh [SECONDS_PER_TARGET (default 30)] [TARGET...]
#
# Needs the nightly toolchain; installs cargo-fuzz with it when missing. Each target starts
# from its seeds in fuzz/corpus/<target>/ (never written to) plus what earlier runs found
# (fuzz/target/corpus/<target>/, kept between runs). A crash leaves its input in
# fuzz/artifacts/<target>/; `cargo +nightly fuzz run <target> <file>` replays it.
#
# Environment:
#   FUZZ_JOBS=N        targets run N at a time (default 1)
#   FUZZ_SANITIZER=S   address, none... (default none: the project's code forbids `unsafe`,
#                      so panics, overflows, hangs and memory blow-ups are what is hunted,
#                      and without ASan each target runs about twice the inputs)
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-30}
shift || true
jobs=${FUZZ_JOBS:-1}
sanitizer=${FUZZ_SANITIZER:-none}
case $seconds in
    '' | *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 64 ;;
esac

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz: the nightly toolchain is not installed (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build -s "$sanitizer"

logs=target/fuzz-logs
mkdir -p "$logs"
stamp=$logs/.started
touch "$stamp"

# One target: libFuzzer for `seconds`; its log ends with the wall and CPU seconds it took.
run_one() {
    local t=$1 start=$SECONDS rc=0
    mkdir -p "target/corpus/$t" "artifacts/$t"
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a blow-up is a crash too.
    cargo +nightly fuzz run -s "$sanitizer" "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$logs/$t.log" 2>&1 || rc=$?
    {
        echo "run::wall_seconds: $((SECONDS - start))"
        # `times` line 2: user and system time of this shell's children (libFuzzer). It
        # must run in this shell, not in a pipeline's subshell, which has no children yet.
        times >"$logs/$t.times"
        tail -1 "$logs/$t.times" | awk '{ split($1, u, /[ms]/); split($2, s, /[ms]/);
            printf "run::cpu_seconds: %.0f\n", u[1] * 60 + u[2] + s[1] * 60 + s[2] }'
        echo "run::exit: $rc"
    } >>"$logs/$t.log"
    return "$rc"
}

pids=()
names=()
for t in "${targets[@]}"; do
    run_one "$t" &
    pids+=($!)
    names+=("$t")
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
done
wait || true

# Reads `key: value` from a target's log (the last one).
stat() { sed -n "s/^$1: *//p" "$logs/$2.log" | tail -1; }

crashed=0
printf '%-16s %12s %8s %8s %8s %8s\n' target runs wall_s cpu_s exec/s crashes
for t in "${names[@]}"; do
    # libFuzzer stops at its first crash, leaving the input as crash-, oom-, timeout- or
    # leak-<sha1>; any other failure (a build error, say) counts as one too.
    crashes=$(find "artifacts/$t" -type f -newer "$stamp" | wc -l)
    if [ "$(stat run::exit "$t")" != 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1
    fi
    printf '%-16s %12s %8s %8s %8s %8s\n' "$t" "$(stat stat::number_of_executed_units "$t")" \
        "$(stat run::wall_seconds "$t")" "$(stat run::cpu_seconds "$t")" \
        "$(stat stat::average_exec_per_sec "$t")" "$crashes"
    if [ "$crashes" -ne 0 ]; then
        crashed=$((crashed + 1))
        echo "  $t: log fuzz/$logs/$t.log; inputs:" $(find "artifacts/$t" -type f -newer "$stamp") >&2
    fi
done
echo "fuzz: $((${#names[@]} - crashed)) passed, $crashed failed"
[ "$crashed" -eq 0 ]
