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
  wrongimprint  a real token, but for a query whose message imprint was altered (one bit)
  wrongnonce    a real token, but for a query whose nonce was altered (one bit)
  noeku      a token over a real TSTInfo, signed (openssl cms -sign -cades) with noeku.pem: same CA,
             no timeStamping extended key usage
  alt        a real token from the TSA of --alt-config (another CA; untrusted by the client)
`GET /_health` answers 200 "ok".

Usage: tsa_http.py --config DIR/tsa.cnf [--alt-config DIR2/tsa.cnf] [--port 0] [--mode ok] [--sleep 30]
                   [--exit-on-stdin-eof]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("ok", "http500", "garbage", "wrongtype", "huge", "sleep", "wrongimprint", "wrongnonce", "noeku", "alt")
MAX_QUERY = 64 * 1024


def der_children(buf, off, end):
    """Yields (tag, value start, value end) of the DER elements in buf[off:end]."""
    while off < end:
        tag, length, hdr = buf[off], buf[off + 1], 2
        if length & 0x80:
            n = length & 0x7F
            length, hdr = int.from_bytes(buf[off + 2:off + 2 + n], "big"), 2 + n
        yield tag, off + hdr, off + hdr + length
        off += hdr + length


def der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tamper_query(query, what):
    """Flips one bit of the query's imprint or nonce (same length, so no re-encoding is needed)."""
    q = bytearray(query)
    _, start, end = next(der_children(q, 0, len(q)))
    integers = 0
    for tag, vs, ve in der_children(q, start, end):
        if what == "imprint" and tag == 0x30:
            for t2, v2s, v2e in der_children(q, vs, ve):
                if t2 == 0x04:
                    q[v2e - 1] ^= 0x01
        if tag == 0x02:
            integers += 1
            if what == "nonce" and integers == 2:  # version, then nonce
                q[ve - 1] ^= 0x01
    return bytes(q)


class State:
    def __init__(self, config, mode, sleep_secs, alt_config=None):
        self.alt_config = alt_config
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
            config = state.config
            if mode == "wrongimprint":
                query = tamper_query(query, "imprint")
            elif mode == "wrongnonce":
                query = tamper_query(query, "nonce")
            elif mode == "alt" and state.alt_config:
                config = state.alt_config
            reply, err = self.openssl_reply(query, config)
            if reply is not None and mode == "noeku":
                reply, err = self.resign_without_eku(reply)
            if reply is None:
                self._send(500, "text/plain", err)
                return
            self._send(200, "application/timestamp-reply", reply)

        def resign_without_eku(self, reply):
            """The TSTInfo of `reply`, re-signed by noeku.pem and wrapped in a granted TimeStampResp."""
            tsa_dir = os.path.dirname(os.path.abspath(state.config))
            with tempfile.TemporaryDirectory() as d:
                r, tok, tst, tok2 = (os.path.join(d, n) for n in ("r.tsr", "t.der", "tst.der", "t2.der"))
                with open(r, "wb") as f:
                    f.write(reply)
                steps = [
                    ["openssl", "ts", "-reply", "-in", r, "-token_out", "-out", tok],
                    ["openssl", "cms", "-verify", "-noverify", "-binary", "-inform", "DER", "-in", tok, "-out", tst],
                    ["openssl", "cms", "-sign", "-binary", "-nodetach", "-cades", "-nosmimecap",
                     "-econtent_type", "1.2.840.113549.1.9.16.1.4", "-md", "sha256",
                     "-signer", os.path.join(tsa_dir, "noeku.pem"), "-inkey", os.path.join(tsa_dir, "noeku.key"),
                     "-outform", "DER", "-in", tst, "-out", tok2],
                ]
                for cmd in steps:
                    p = subprocess.run(cmd, capture_output=True)
                    if p.returncode != 0:
                        return None, p.stderr[-300:]
                with open(tok2, "rb") as f:
                    token = f.read()
            body = b"\x30\x03\x02\x01\x00" + token  # PKIStatusInfo { granted }, then the token
            return b"\x30" + der_len(len(body)) + body, b""

        def openssl_reply(self, query, config):
            with tempfile.TemporaryDirectory() as d:
                qf, rf = os.path.join(d, "q.tsq"), os.path.join(d, "r.tsr")
                with open(qf, "wb") as f:
                    f.write(query)
                with state.lock:
                    p = subprocess.run(
                        ["openssl", "ts", "-reply", "-config", config, "-queryfile", qf, "-out", rf],
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
    ap.add_argument("--alt-config", help="tsa.cnf of a second TSA (another CA), used in mode alt")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any free port)")
    ap.add_argument("--mode", choices=MODES, default="ok")
    ap.add_argument("--sleep", type=float, default=30.0, help="seconds a request hangs in sleep mode")
    ap.add_argument("--exit-on-stdin-eof", action="store_true",
                    help="exit when stdin closes (the parent process died)")
    args = ap.parse_args()
    if not os.path.isfile(args.config):
        sys.exit("tsa_http.py: config %s not found; create it with make-tsa.sh" % args.config)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(State(args.config, args.mode, args.sleep, args.alt_config)))
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
