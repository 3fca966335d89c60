#!/bin/bash
# The writer's commit path before/after (docs/PERFORMANCE.md, issue 14.12): one measured run of one binary.
# usage: benches/group-commit.sh BIN LABEL batch|single|sqlite
#   batch:  NDJSON batches of 1,000, 8 connections, 1,000,000 events (EVENTS), search on
#   single: one event per POST, 64 connections, 100,000 events (EVENTS), search on
#   sqlite: the raw-SQLite baseline (`anchorlog bench --mode sqlite`, 1,000-row transactions), no server
# DEV: an `anchorlog dev` state dir (run it once, then Ctrl-C), RUNS: scratch. Needs python3.
# Prints one line: label, mode, events/s, errors, events, p50/p99 ack, server and writer CPU seconds, load
# average before -> after. The run's database is removed afterwards.
set -u
BIN=$1; LABEL=$2; MODE=$3
DEV=${DEV:-/tmp/bench-dev}
R=${RUNS:-/tmp/bench-commit}/run-$LABEL-$MODE-$$; rm -rf "$R"; mkdir -p "$R"
L0=$(cut -d' ' -f1 /proc/loadavg)
summary() {
  python3 -c "import json;d=json.load(open('$R/bench.json'));print(round(d['events_per_second']), d['errors'], d['events'], 'p50/p99_ms=%.1f/%.1f' % (d['p50_ms'], d['p99_ms']))" 2>/dev/null \
    || head -c 300 "$R/bench.json" "$R/bench.err"
}
if [ "$MODE" = sqlite ]; then
  "$BIN" bench --mode sqlite --db "$R/baseline.db" --events "${EVENTS:-1000000}" --batch-size 1000 > "$R/bench.json" 2> "$R/bench.err"
  echo "$LABEL $MODE eps/err/events=$(summary) load=$L0->$(cut -d' ' -f1 /proc/loadavg)"
  rm -rf "$R"
  exit 0
fi
PORT=$((19300 + RANDOM % 200))
# dev's config, own database, no TSA; search stays on (the default)
python3 - "$DEV/anchorlog.toml" "$R/anchorlog.toml" "$R/anchorlog.db" "$PORT" <<'PY'
import sys,re
src,dst,db,port=sys.argv[1:]
t=open(src).read()
t=re.sub(r'database = ".*"', f'database = "{db}"', t)
t=re.sub(r'listen = ".*"', f'listen = "127.0.0.1:{port}"', t, count=1)
t=re.sub(r'health_listen = ".*"\n', '', t)
t=t.split('[[tsa]]')[0]
open(dst,'w').write(t)
PY
SOFTHSM2_CONF=$DEV/softhsm/softhsm2.conf "$BIN" serve --config "$R/anchorlog.toml" > "$R/server.log" 2>&1 &
SPID=$!
for i in $(seq 1 300); do grep -q listening "$R/server.log" && break; sleep 0.1; done
D=$DEV/certs
if [ "$MODE" = batch ]; then
  ARGS="--mode batch --batch-size 1000 --concurrency 8 --events ${EVENTS:-1000000}"
else
  ARGS="--mode single --concurrency 64 --events ${EVENTS:-100000}"
fi
"$BIN" bench $ARGS --addr 127.0.0.1:$PORT --ca $D/ca.pem --cert $D/producer.pem --key $D/producer.key \
  > "$R/bench.json" 2> "$R/bench.err"
L1=$(cut -d' ' -f1 /proc/loadavg)
cpu() { awk '{print ($14+$15)/100}' "$1"; }
TOT=$(cpu /proc/$SPID/stat); W=0
for t in /proc/$SPID/task/*; do
  [ "$(cat "$t/comm")" = anchorlog-write ] && W=$(cpu "$t/stat")
done
kill -TERM $SPID; wait $SPID
echo "$LABEL $MODE eps/err/events=$(summary) servercpu=$TOT writer=$W load=$L0->$L1"
rm -rf "$R"
