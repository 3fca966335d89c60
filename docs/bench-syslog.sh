#!/usr/bin/env bash
# Syslog ingest over mutual TLS from one rsyslog connection (docs/PERFORMANCE.md, "Syslog over TLS"): rsyslog,
# configured with the documented recipe (docs/INTEGRATIONS.md, `<!-- recipe: rsyslog -->`), reads MESSAGES RFC 5424
# lines from a file (imfile) and forwards them octet-counted to the appliance; the clock runs from rsyslog's start
# until the appliance has committed every message (`/readyz` `events`, read from the health listener). A message
# counts once it is committed with `synchronous=FULL`: the figure is the durable rate.
#
# Prepare the dev state once, then run this:
#   target/release/anchorlog dev --state-dir /tmp/bench-syslog --listen 127.0.0.1:19843   # Ctrl-C once it listens
#   docs/bench-syslog.sh target/release/anchorlog /tmp/bench-syslog [MESSAGES]
# The appliance is served by `anchorlog serve` from the dev configuration without its TSA and witness (dev mode
# starts those, `serve` does not), on a fresh database.
set -euo pipefail
BIN=$(realpath "$1"); STATE=$(realpath "$2"); N=${3:-1000000}
DOC=$(dirname "$(realpath "$0")")/INTEGRATIONS.md
WORK=$(mktemp -d)
SERVER=; RSYSLOG=
trap 'kill "$RSYSLOG" "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
SYSLOG_PORT=$(grep -m1 '^syslog_listen = ' "$STATE/anchorlog.toml" | cut -d\" -f2 | sed 's/.*://')
HEALTH=$(grep -m1 '^health_listen = ' "$STATE/anchorlog.toml" | cut -d\" -f2)
events() { curl -s "http://$HEALTH/readyz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"])'; }

# N RFC 5424 messages, sshd and sudo alternating, ~150 bytes each.
python3 - "$N" > "$WORK/input.log" <<'PY'
import sys
n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    if i % 2:
        out.write(f"<38>1 2026-12-07T10:00:00.{i % 1000000:06d}Z host-{i % 50} sshd {1000 + i % 30000} - - "
                  f"Accepted publickey for user{i % 1000} from 10.0.{i % 256}.{i % 200} port {20000 + i % 40000} ssh2\n")
    else:
        out.write(f"<85>1 2026-12-07T10:00:00.{i % 1000000:06d}Z host-{i % 50} sudo - - - "
                  f"user{i % 1000} : TTY=pts/0 ; PWD=/home/user{i % 1000} ; USER=root ; COMMAND=/bin/ls\n")
PY
echo "input: $N messages, $(stat -c %s "$WORK/input.log") bytes"

# The dev configuration without [[tsa]] / [[witness]] sections, on a database of its own.
awk '/^\[\[(tsa|witness)\]\]/{skip=1; next} /^\[/{skip=0} !skip' "$STATE/anchorlog.toml" |
  grep -v '^database = ' | sed "s|^\[storage\]|[storage]\ndatabase = \"$WORK/bench.db\"|" > "$WORK/anchorlog.toml"
SOFTHSM2_CONF="$STATE/softhsm/softhsm2.conf" ANCHORLOG_LOG=warn "$BIN" serve --config "$WORK/anchorlog.toml" \
  > "$WORK/serve.out" 2> "$WORK/serve.log" &
SERVER=$!
for _ in $(seq 1 100); do grep -q listening "$WORK/serve.out" 2>/dev/null && break; sleep 0.2; done
base=$(events)

# rsyslog with the documented recipe, pointed at the dev appliance.
recipe=$(awk '/<!-- recipe: rsyslog -->/{on=1; next} on && /^```/{if (started) exit; started=1; next} on && started' "$DOC")
recipe=${recipe//\/etc\/rsyslog.d\/anchorlog\/ca.pem/$STATE/certs/ca.pem}
recipe=${recipe//\/etc\/rsyslog.d\/anchorlog\/client.pem/$STATE/certs/producer.pem}
recipe=${recipe//\/etc\/rsyslog.d\/anchorlog\/client.key/$STATE/certs/producer.key}
recipe=${recipe//target=\"anchorlog.example.org\"/target=\"127.0.0.1\"}
recipe=${recipe//port=\"6514\"/port=\"$SYSLOG_PORT\"}
recipe=${recipe//StreamDriverPermittedPeers=\"anchorlog.example.org\"/StreamDriverPermittedPeers=\"localhost\"}
mkdir -p "$WORK/rsyslog"
cat > "$WORK/rsyslog.conf" <<CONF
global(workDirectory="$WORK/rsyslog")
module(load="imfile")
$recipe
input(type="imfile" File="$WORK/input.log" Tag="input" ruleset="anchorlog")
CONF
start=$(date +%s.%N)
rsyslogd -n -f "$WORK/rsyslog.conf" -i "$WORK/rsyslog.pid" > "$WORK/rsyslog.log" 2>&1 &
RSYSLOG=$!
deadline=$(( $(date +%s) + 600 ))
while :; do
  now=$(events)
  [ $((now - base)) -ge "$N" ] && break
  if [ "$(date +%s)" -gt "$deadline" ]; then echo "only $((now - base)) of $N after 600 s" >&2; exit 1; fi
  sleep 0.2
done
end=$(date +%s.%N)
python3 -c "d=$end-$start; print('syslog: %d messages committed in %.2f s = %.0f messages/s (one rsyslog connection, octet-counted, mutual TLS)' % ($N, d, $N/d))"
ticks=$(awk '{print $14 + $15}' "/proc/$SERVER/stat")
python3 -c "t=$ticks/$(getconf CLK_TCK); print('appliance CPU %.1f s = %.1f us/message' % (t, t * 1e6 / $N))"
