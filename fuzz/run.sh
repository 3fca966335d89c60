#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 20) and prints libFuzzer's closing figures per target
# (executions, coverage). Exits non-zero if any target found a crash, a leak or a timeout; the input is in
# fuzz/artifacts/<target>/ (reproduce: cargo fuzz run <target> <file>).
#
# Only the stable toolchain exists on our machines: cargo-fuzz needs `-Zsanitizer=address`, which stable rustc
# accepts with RUSTC_BOOTSTRAP=1 (docs/RELIABILITY.md, "Fuzzing"). The committed seeds in fuzz/corpus/<target>/
# are read only; what a run discovers goes to fuzz/target/corpus/<target>/ (kept between local runs, never
# committed: minimise it with `cargo fuzz cmin` before adding anything to the seeds).
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
# Environment:
#   FUZZ_PROFILE=release (default) the optimised sanitizer build, for campaigns: long to build, fast to run.
#   FUZZ_PROFILE=dev     the unoptimised sanitizer build (`cargo fuzz build --dev`), for CI's smoke run: builds
#                        in about 2 minutes instead of tens, runs each input about 10x slower.
#   FUZZ_JOBS=N          targets fuzzed at the same time (default 1); each one uses one core.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
profile=${FUZZ_PROFILE:-release}
jobs=${FUZZ_JOBS:-1}
export RUSTC_BOOTSTRAP=1
# Known false leak reports (fuzz/lsan.supp says which and why).
export LSAN_OPTIONS="suppressions=$PWD/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if ! cargo fuzz --version 2>/dev/null | grep -q ' 0\.13\.2'; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
case "$profile" in
  release) build_flags=(--debug-assertions) ;;
  dev) build_flags=(--dev) ;;
  *) echo "FUZZ_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
# One build of every target (ASan, sanitizer coverage, debug assertions) before any runs.
start=$(date +%s)
cargo fuzz build "${build_flags[@]}"
echo "fuzz build ($profile): $(( $(date +%s) - start )) s"
mkdir -p target/logs

# Fuzzes one target; its summary line goes to target/logs/<target>.summary, the exit status says crash or not.
fuzz_one() {
  local t=$1 log="target/logs/$1.log" status runs cov
  mkdir -p "target/corpus/$t" "corpus/$t"
  # -rss_limit_mb: the parsers bound what they allocate; 2 GiB leaves room for ASan's own shadow memory.
  # -timeout: one input taking longer than 10 s is a hang.
  if cargo fuzz run "${build_flags[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
  cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' || echo 'cov: ?')
  echo "$t: $status, $runs executions in ${seconds} s, $cov" > "target/logs/$t.summary"
  [ "$status" = ok ]
}

failed=()
running=()
for t in "${targets[@]}"; do
  fuzz_one "$t" &
  running+=("$!:$t")
  # Wait for the oldest run once FUZZ_JOBS are under way.
  while [ ${#running[@]} -ge "$jobs" ]; do
    pid=${running[0]%%:*}; name=${running[0]#*:}; running=("${running[@]:1}")
    wait "$pid" || failed+=("$name")
    cat "target/logs/$name.summary"
  done
done
for r in "${running[@]}"; do
  pid=${r%%:*}; name=${r#*:}
  wait "$pid" || failed+=("$name")
  cat "target/logs/$name.summary"
done
if [ ${#failed[@]} -gt 0 ]; then
  for t in "${failed[@]}"; do echo "== $t"; tail -40 "target/logs/$t.log"; done
  echo "fuzz targets that failed: ${failed[*]}" >&2
  exit 1
fi
