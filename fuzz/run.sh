#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 20), one after the other, and prints libFuzzer's
# closing figures per target (executions, coverage). Exits non-zero if any target found a crash, a leak or a
# timeout; the input is in fuzz/artifacts/<target>/ (reproduce: cargo fuzz run <target> <file>).
#
# Only the stable toolchain exists on our machines: cargo-fuzz needs `-Zsanitizer=address`, which stable rustc
# accepts with RUSTC_BOOTSTRAP=1 (docs/RELIABILITY.md, "Fuzzing"). The committed seeds in fuzz/corpus/<target>/
# are read only; what a run discovers goes to fuzz/target/corpus/<target>/ (kept between local runs, never
# committed: minimise it with `cargo fuzz cmin` before adding anything to the seeds).
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if ! cargo fuzz --version 2>/dev/null | grep -q ' 0\.13\.2'; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
# One build of every target (ASan, sanitizer coverage, debug assertions) before any runs.
start=$(date +%s)
cargo fuzz build --debug-assertions
echo "fuzz build: $(( $(date +%s) - start )) s"
mkdir -p target/logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "target/corpus/$t" "corpus/$t"
  log="target/logs/$t.log"
  # -rss_limit_mb: the parsers bound what they allocate; 2 GiB leaves room for ASan's own shadow memory.
  # -timeout: one input taking longer than 10 s is a hang.
  if cargo fuzz run --debug-assertions "$t" "target/corpus/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
  cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' || echo 'cov: ?')
  echo "$t: $status, $runs executions in ${seconds} s, $cov"
  if [ "$status" = FAILED ]; then tail -40 "$log"; fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]}" >&2
  exit 1
fi
