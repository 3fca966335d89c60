#!/usr/bin/env bash
# The mTLS single-event benchmark with and without a client CRL of 10,000 entries, alternated in one run
# (docs/PERFORMANCE.md, "Client CRLs"). Prepare the dev state once, then run this:
#   target/release/anchorlog dev --state-dir /tmp/bench-crl --listen 127.0.0.1:19743   # Ctrl-C once it listens
#   docs/bench-crl.sh target/release/anchorlog /tmp/bench-crl [EVENTS] [ROUNDS]
# Each run serves the dev configuration without its TSA and witness (dev mode starts those, `serve` does not) on
# a fresh database, posts EVENTS single events over 64 keep-alive connections, and prints one line per run.
set -euo pipefail
BIN=$(realpath "$1"); STATE=$(realpath "$2"); EVENTS=${3:-300000}; ROUNDS=${4:-2}
ADDR=$(grep -m1 "^listen = " "$STATE/anchorlog.toml" | cut -d\" -f2)
WORK=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
SERVER=

# A CRL of the dev client CA revoking 10,000 serials none of the dev certificates has.
mkdir -p "$WORK/ca"
: > "$WORK/ca/index.txt"
for i in $(seq 1 10000); do
  printf 'R\t301231000000Z\t261201000000Z\t%08X\tunknown\t/CN=revoked-%d\n' $((0x10000000 + i)) "$i" >> "$WORK/ca/index.txt"
done
cat > "$WORK/ca/ca.cnf" <<CNF
[ ca ]
default_ca = bench
[ bench ]
database = $WORK/ca/index.txt
crlnumber = $WORK/ca/crlnumber
default_md = sha256
default_crl_days = 7
CNF
echo 01 > "$WORK/ca/crlnumber"
openssl ca -gencrl -config "$WORK/ca/ca.cnf" -cert "$STATE/certs/ca.pem" -keyfile "$STATE/certs/ca.key" \
  -out "$WORK/clients.crl" 2>/dev/null
echo "CRL: $(openssl crl -in "$WORK/clients.crl" -noout -text | grep -c 'Serial Number') entries, $(stat -c %s "$WORK/clients.crl") bytes"

# The dev configuration without [[tsa]] / [[witness]] sections, on a database of its own.
base=$(awk '/^\[\[(tsa|witness)\]\]/{skip=1; next} /^\[/{skip=0} !skip' "$STATE/anchorlog.toml" |
  grep -v '^database = ')
run() { # $1: label, $2: extra [server] line
  local conf="$WORK/$1.toml" db="$WORK/$1.db"
  rm -f "$db" "$db"-* "$db".search.db*
  printf '%s\n' "$base" | sed "s|^\[server\]|[server]\n$2|; s|^\[storage\]|[storage]\ndatabase = \"$db\"|" > "$conf"
  SOFTHSM2_CONF="$STATE/softhsm/softhsm2.conf" ANCHORLOG_LOG=warn "$BIN" serve --config "$conf" > "$WORK/serve.out" 2> "$WORK/$1.log" &
  SERVER=$!
  for _ in $(seq 1 100); do grep -q listening "$WORK/serve.out" 2>/dev/null && break; sleep 0.2; done
  local d="$STATE/certs"
  printf '%-8s ' "$1"
  "$BIN" bench --addr "$ADDR" --ca "$d/ca.pem" --cert "$d/producer.pem" --key "$d/producer.key" \
    --mode single --concurrency 64 --events "$EVENTS" 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("events %(events)d errors %(errors)d seconds %(seconds).1f events/s %(events_per_second).0f p50 %(p50_ms).2f ms p99 %(p99_ms).2f ms" % r, end=" ")'
  # The server's own CPU time (user + system, fields 14 and 15 of /proc/PID/stat): on a shared machine it varies
  # far less than wall-clock throughput, so it shows a per-event cost the throughput noise hides.
  local ticks; ticks=$(awk '{print $14 + $15}' "/proc/$SERVER/stat")
  python3 -c "import sys; t=$ticks/$(getconf CLK_TCK); print('server CPU %.1f s = %.1f us/event' % (t, t * 1e6 / $EVENTS))"
  kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=
  rm -f "$db" "$db"-* "$db".search.db*
}
for r in $(seq 1 "$ROUNDS"); do
  run "no-crl" "reload_poll_s = 5"
  run "crl-10k" "client_crl_files = [\"$WORK/clients.crl\"]"
done
