#!/usr/bin/env bash
# Ingest with and without witnesses (docs/PERFORMANCE.md, "Witnessing"): the same `anchorlog serve` config (the
# dev mode's, TSA off), three alternating pairs of runs on fresh databases; a witnessed run gets two freshly keyed
# `anchorlog witness` processes (a witness keeps its state per origin: a fresh database under the same origin
# would rightly be refused as a rolled-back log). Prints throughput, the server's CPU seconds and /readyz.
# Usage: cargo build --release && benches/witnessing-ingest.sh [WORKDIR]   (needs ~2.5 GB free in WORKDIR)
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/anchorlog}
W=${1:-/tmp/anchorlog-witnessing-bench}
S=$W/dev
rm -rf "$W" && mkdir -p "$W"
"$BIN" dev --state-dir "$S" --listen 127.0.0.1:19443 > "$W/dev.out" 2> "$W/dev.err" &
DEV=$!
for _ in $(seq 1 100); do grep -qs listening "$W/dev.out" && break; sleep 0.3; done
kill -TERM "$DEV"; wait "$DEV" || true
export SOFTHSM2_CONF=$S/softhsm/softhsm2.conf
ORIGIN=$(sed -n 's/^origin = "\(.*\)"/\1/p' "$S/anchorlog.toml")
# The dev config without its TSA and witness sections (both stopped with dev mode).
python3 - "$S/anchorlog.toml" "$W/base.toml" <<'P'
import sys
t = open(sys.argv[1]).read()
t = t.split("\n# The local witness started by")[0].split("\n# The local RFC 3161 TSA")[0]
open(sys.argv[2], "w").write(t)
P
start_witnesses() {
  for w in w1 w2; do
    rm -rf "$W/$w" && mkdir -p "$W/$w"
    printf 'name = "witness.bench/%s"\n[server]\nlisten = "127.0.0.1:0"\nprefix = "/witness"\n[storage]\ndatabase = "%s/witness.db"\n[key]\nbackend = "file"\nfile = "%s/witness.key"\n[[log]]\norigin = "%s"\npublic_key_files = ["%s/keys/signer.pem"]\n' \
      "$w" "$W/$w" "$W/$w" "$ORIGIN" "$S" > "$W/$w/witness.toml"
    "$BIN" witness keygen --config "$W/$w/witness.toml" > "$W/$w/vkey"
    "$BIN" witness --config "$W/$w/witness.toml" > "$W/$w/out" 2> "$W/$w/err" &
    echo $! > "$W/$w/pid"
  done
  sleep 1
}
stop_witnesses() {
  for w in w1 w2; do
    echo "$w cpu_s $(awk '{printf "%.2f", ($14+$15)/100}' "/proc/$(cat "$W/$w/pid")/stat")"
    kill "$(cat "$W/$w/pid")"
  done
}
D=$S/certs
B="$BIN bench --addr 127.0.0.1:19443 --ca $D/ca.pem --cert $D/producer.pem --key $D/producer.key"
summary='import json,sys;r=json.load(sys.stdin);print(sys.argv[1], r["events"], "events", round(r["events_per_second"]), "events/s p50", round(r["p50_ms"],1), "ms p99", round(r["p99_ms"],1), "ms")'
run() { # name, witnessed (yes/no)
  sed "s#^database = \".*\"#database = \"$W/$1.db\"#" "$W/base.toml" > "$W/$1.toml"
  if [ "$2" = yes ]; then
    start_witnesses
    for w in w1 w2; do
      url=$(head -1 "$W/$w/out" | sed 's#anchorlog witness listening on ##')
      printf '\n[[witness]]\nname = "%s"\nurl = "%s/witness"\nvkey = "%s"\n' "$w" "$url" "$(cat "$W/$w/vkey")" >> "$W/$1.toml"
    done
    printf '[witnessing]\nquorum = 2\n' >> "$W/$1.toml"
  fi
  "$BIN" serve --config "$W/$1.toml" > "$W/$1.out" 2> "$W/$1.err" &
  local P=$!
  for _ in $(seq 1 100); do grep -qs listening "$W/$1.out" && break; sleep 0.2; done
  echo "== $1 (witnesses: $2), load $(cut -d' ' -f1-3 /proc/loadavg)"
  $B --mode single --concurrency 64 --events 300000 | python3 -c "$summary" single
  $B --mode batch --batch-size 1000 --concurrency 8 --events 1000000 | python3 -c "$summary" batch
  sleep 2
  echo "server cpu_s $(awk '{printf "%.2f", ($14+$15)/100}' "/proc/$P/stat")"
  curl -s --cacert "$D/ca.pem" --cert "$D/auditor.pem" --key "$D/auditor.key" https://127.0.0.1:19443/readyz |
    python3 -c 'import json,sys;r=json.load(sys.stdin);print({k:r.get(k) for k in ("events","last_head_height","witnessing","heads_below_quorum","witness_refusals")})'
  kill -TERM "$P"; wait "$P" || true
  if [ "$2" = yes ]; then stop_witnesses; fi
  # Each run's database (ledger + search) is ~2 GB: keep only the logs.
  rm -f "$W/$1".db* "$W/$1".search.db*
}
for r in 1 2 3; do run "a$r" no; run "b$r" yes; done
