#!/usr/bin/env python3
"""Local RFC 3161 TSA over HTTP for tests and `anchorlog dev` (Python stdlib + openssl only).

POST application/timestamp-query to any path -> `openssl ts -reply -config CONFIG` ->
200 application/timestamp-reply. Binds 127.0.0.1 only. The chosen port is printed alone on
the first line of stdout (use --port 0 to let the OS pick) so a parent process can read it.

Fault simulation for tests, set at start (--mode) or at run time through the control endpoint
`POST /_control/mode` with the mode name as the body (answers 204):
  ok         normal replies
  http500    answer 500 Internal Server Error
  garbage    200 application/timestamp-reply with a body that is not DER
  wrongtype  200 text/html
  huge       200 application/timestamp-reply with a 1 MiB body
  sleep      accept the request and never answer (until --sleep seconds pass)
`GET /_health` answers 200 "ok".

Usage: tsa_http.py --config DIR/tsa.cnf [--port 0] [--mode ok] [--sleep 30] [--exit-on-stdin-eof]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("ok", "http500", "garbage", "wrongtype", "huge", "sleep")
MAX_QUERY = 64 * 1024


class State:
    def __init__(self, config, mode, sleep_secs):
        self.config = config
        self.mode = mode
        self.sleep_secs = sleep_secs
        # `openssl ts -reply` increments the serial file; serialise calls so two replies
        # never read the same serial.
        self.lock = threading.Lock()


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, code, ctype, body):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _read_body(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0 or length > MAX_QUERY:
                return None
            return self.rfile.read(length)

        def do_GET(self):
            if self.path == "/_health":
                self._send(200, "text/plain", b"ok")
            else:
                self._send(404, "text/plain", b"not found")

        def do_POST(self):
            body = self._read_body()
            if body is None:
                self._send(413, "text/plain", b"query too large")
                return
            if self.path == "/_control/mode":
                mode = body.decode("ascii", "replace").strip()
                if mode not in MODES:
                    self._send(400, "text/plain", ("unknown mode; use one of %s" % ", ".join(MODES)).encode())
                    return
                state.mode = mode
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.timestamp(body)

        def timestamp(self, query):
            mode = state.mode
            if mode == "sleep":
                time.sleep(state.sleep_secs)
                self.close_connection = True
                return
            if mode == "http500":
                self._send(500, "text/plain", b"simulated failure")
                return
            if mode == "garbage":
                self._send(200, "application/timestamp-reply", b"this is not DER at all")
                return
            if mode == "wrongtype":
                self._send(200, "text/html", b"<html>captive portal</html>")
                return
            if mode == "huge":
                self._send(200, "application/timestamp-reply", b"\x30" * (1024 * 1024))
                return
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype != "application/timestamp-query":
                self._send(415, "text/plain", b"expected Content-Type application/timestamp-query")
                return
            reply, err = self.openssl_reply(query)
            if reply is None:
                self._send(500, "text/plain", err)
                return
            self._send(200, "application/timestamp-reply", reply)

        def openssl_reply(self, query):
            with tempfile.TemporaryDirectory() as d:
                qf, rf = os.path.join(d, "q.tsq"), os.path.join(d, "r.tsr")
                with open(qf, "wb") as f:
                    f.write(query)
                with state.lock:
                    p = subprocess.run(
                        ["openssl", "ts", "-reply", "-config", state.config, "-queryfile", qf, "-out", rf],
                        capture_output=True,
                    )
                if p.returncode != 0 or not os.path.exists(rf):
                    return None, p.stderr[-300:]
                with open(rf, "rb") as f:
                    return f.read(), b""

    return Handler


def main():
    ap = argparse.ArgumentParser(description="Local RFC 3161 TSA over HTTP (openssl ts -reply)")
    ap.add_argument("--config", required=True, help="tsa.cnf written by make-tsa.sh")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any free port)")
    ap.add_argument("--mode", choices=MODES, default="ok")
    ap.add_argument("--sleep", type=float, default=30.0, help="seconds a request hangs in sleep mode")
    ap.add_argument("--exit-on-stdin-eof", action="store_true",
                    help="exit when stdin closes (the parent process died)")
    args = ap.parse_args()
    if not os.path.isfile(args.config):
        sys.exit("tsa_http.py: config %s not found; create it with make-tsa.sh" % args.config)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(State(args.config, args.mode, args.sleep)))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    if args.exit_on_stdin_eof:
        def watch():
            sys.stdin.read()
            os._exit(0)
        threading.Thread(target=watch, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
