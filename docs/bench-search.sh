#!/bin/bash
# Cost of normalized search fields on batched ingest (docs/PERFORMANCE.md, issue 4): one measured run.
# usage: docs/bench-search.sh on|off N   (BIN: release binary, DEV: an `anchorlog dev` state dir, RUNS: scratch,
# CLIENT: the binary whose `bench` generates the load, default BIN — e.g. an older server with today's load)
# Needs python3, sqlite3 and /usr/bin/time. Prints one line: events/s, errors, events, CPU seconds of the server,
# its writer and indexer threads, load average before -> after, search rows at the end of the load and after stop.
set -u
BIN=${BIN:-/tmp/anchorlog-bench}
CLIENT=${CLIENT:-$BIN}
LABEL=$1; N=$2
DEV=${DEV:-/tmp/bench-dev}
R=${RUNS:-/tmp/bench-search}/run-$LABEL-$N; rm -rf $R; mkdir -p $R
PORT=$((19600 + RANDOM % 300))
# dev's config, own database, no TSA (identical for both), search on/off
python3 - "$DEV/anchorlog.toml" "$R/anchorlog.toml" "$R/anchorlog.db" "$PORT" "$LABEL" <<'PY'
import sys,re
src,dst,db,port,label=sys.argv[1:]
t=open(src).read()
t=re.sub(r'database = ".*"', f'database = "{db}"', t)
t=re.sub(r'listen = ".*"', f'listen = "127.0.0.1:{port}"', t, count=1)
t=t.split('[[tsa]]')[0]
if label=='off': t+='\n[search]\nenabled = false\n'
open(dst,'w').write(t)
PY
SOFTHSM2_CONF=$DEV/softhsm/softhsm2.conf $BIN serve --config $R/anchorlog.toml > $R/server.log 2>&1 &
SPID=$!
for i in $(seq 1 100); do grep -q listening $R/server.log && break; sleep 0.1; done
L0=$(cut -d' ' -f1 /proc/loadavg)
D=$DEV/certs
/usr/bin/time -f "clientcpu=%U+%S" -o $R/client.time $CLIENT bench --mode batch --addr 127.0.0.1:$PORT --ca $D/ca.pem --cert $D/producer.pem --key $D/producer.key \
  --events 1000000 --batch-size 1000 --concurrency 8 > $R/bench.json 2> $R/bench.err
L1=$(cut -d' ' -f1 /proc/loadavg)
cpu() { awk '{print ($14+$15)/100}' $1; }
TOT=$(cpu /proc/$SPID/stat); W=0; I=0
for t in /proc/$SPID/task/*; do
  c=$(cat $t/comm)
  [ "$c" = anchorlog-write ] && W=$(cpu $t/stat)
  [ "$c" = anchorlog-index ] && I=$(cpu $t/stat)
done
# search lag: how many rows the search db has right at the end of the run
S=$(sqlite3 "file:$R/anchorlog.search.db?mode=ro" "select count(*) from event_fields" 2>/dev/null || echo -)
T0=$(date +%s.%N); kill -TERM $SPID; wait $SPID; T1=$(date +%s.%N)
S2=$(sqlite3 "file:$R/anchorlog.search.db?mode=ro" "select count(*) from event_fields" 2>/dev/null || echo -)
EPS=$(python3 -c "import json;d=json.load(open('$R/bench.json'));print(round(d['events_per_second']), d['errors'], d['events'])" 2>/dev/null || cat $R/bench.json | head -c 300)
echo "$LABEL $N eps/err/events=$EPS servercpu=$TOT writer=$W indexer=$I load=$L0->$L1 search_at_end=$S search_after_stop=$S2 client=$(cat $R/client.time) stop_s=$(python3 -c "print(round($T1-$T0,2))")"
rm -f $R/anchorlog.db $R/anchorlog.db-wal
