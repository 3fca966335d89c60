#!/usr/bin/env python3
"""An independent verifier for anchorlog export bundles, written from docs/FORMAT.md alone.

Uses only the Python standard library (tarfile, json, hashlib, base64) and the `openssl` command line for
ECDSA signatures and RFC 3161 tokens.
Usage: verify_bundle.py BUNDLE.tar SIGNER.pem [--tsa-ca TSA-CA.pem [--require-timestamps]]
With --tsa-ca every heads/<h>.tsr is checked with `openssl ts -verify` and its genTime against the head's
seal time (at most 300 s earlier); a head without a token is listed, or fails with --require-timestamps.
Exit codes: 0 the bundle verifies, 3 it does not (the first bad seq or height is printed), 1 unreadable input.
"""
import base64
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile


class Invalid(Exception):
    pass


def sha256(data):
    return hashlib.sha256(data).digest()


def leaf_hash(entry):
    return sha256(b"\x00" + entry)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


class Frontier:
    """Roots of the perfect subtrees of the tree so far, largest first (one per one bit of the size)."""

    def __init__(self, size=0, subtrees=None):
        self.size = size
        self.stack = list(subtrees or [])
        if len(self.stack) != bin(size).count("1"):
            raise Invalid("anchor: %d subtrees for tree size %d" % (len(self.stack), size))

    def push(self, leaf):
        index, node = self.size, leaf
        while index & 1:
            node = node_hash(self.stack.pop(), node)
            index >>= 1
        self.stack.append(node)
        self.size += 1

    def root(self):
        if not self.stack:
            return sha256(b"")
        acc = self.stack[-1]
        for left in reversed(self.stack[:-1]):
            acc = node_hash(left, acc)
        return acc


COUNTER = re.compile(r"anchorlog-counter (0|[1-9][0-9]*) (0|[1-9][0-9]*) 0x([0-9a-f]{8})")


def parse_checkpoint(height, text):
    lines = text.split("\n")
    if len(lines) not in (7, 8) or lines[-1] != "":
        raise Invalid("head height %d: not six (or seven) newline-terminated lines" % height)
    prefixes = ("anchorlog-block ", "anchorlog-prev ", "anchorlog-time ")
    for line, prefix in zip(lines[3:6], prefixes):
        if not line.startswith(prefix):
            raise Invalid("head height %d: expected %r" % (height, prefix))
    counter = None
    if len(lines) == 8:
        # The TPM monotonic counter line (docs/FORMAT.md §3): value, reset count, NV index.
        m = COUNTER.fullmatch(lines[6])
        if m is None or int(m.group(1)) >= 2 ** 64 or int(m.group(2)) >= 2 ** 32:
            raise Invalid("head height %d: malformed anchorlog-counter line" % height)
        counter = {"value": int(m.group(1)), "reset_count": int(m.group(2)), "index": int(m.group(3), 16)}
    return {
        "origin": lines[0],
        "tree_size": int(lines[1]),
        "root": base64.b64decode(lines[2], validate=True),
        "height": int(lines[3][len(prefixes[0]):]),
        "prev": base64.b64decode(lines[4][len(prefixes[1]):], validate=True),
        "time": lines[5][len(prefixes[2]):],
        "counter": counter,
    }


def signature_ok(key, text, sig):
    with tempfile.TemporaryDirectory() as d:
        t, s = os.path.join(d, "head.txt"), os.path.join(d, "head.sig")
        with open(t, "wb") as f:
            f.write(text)
        with open(s, "wb") as f:
            f.write(sig)
        r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", key, "-signature", s, t],
                           capture_output=True)
        return r.returncode == 0


MAX_SKEW = datetime.timedelta(seconds=300)


def token_problem(text, tsr, ca):
    """Why the DER TimeStampResp `tsr` is not a valid token over `text` under `ca`, or None."""
    with tempfile.TemporaryDirectory() as d:
        t, r = os.path.join(d, "head.txt"), os.path.join(d, "head.tsr")
        with open(t, "wb") as f:
            f.write(text)
        with open(r, "wb") as f:
            f.write(tsr)
        v = subprocess.run(["openssl", "ts", "-verify", "-data", t, "-in", r, "-CAfile", ca],
                           capture_output=True, text=True)
        if v.returncode != 0 or "Verification: OK" not in v.stdout:
            return "openssl ts -verify failed"
        info = subprocess.run(["openssl", "ts", "-reply", "-in", r, "-text"], capture_output=True, text=True)
    for line in info.stdout.splitlines():
        if line.startswith("Time stamp: "):
            # e.g. "Nov 23 13:00:00 2026 GMT" or "Nov 23 13:00:00.123 2026 GMT"
            parts = line[len("Time stamp: "):].split()
            clock = parts[2].split(".")[0]
            stamp = " ".join(parts[0:2] + [clock, parts[3]])
            return datetime.datetime.strptime(stamp, "%b %d %H:%M:%S %Y").replace(tzinfo=datetime.timezone.utc)
    return "no genTime in the token"


def check_token(height, text, tsr, ca):
    sealed = parse_checkpoint(height, text.decode("utf-8"))["time"]
    sealed = datetime.datetime.strptime(sealed[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    got = token_problem(text, tsr, ca)
    if isinstance(got, str):
        raise Invalid("head height %d: time-stamp token does not verify (%s)" % (height, got))
    # genTime is truncated to the second here, the seal time too: compare with one second of slack.
    if got + datetime.timedelta(seconds=1) < sealed - MAX_SKEW:
        raise Invalid("head height %d: time-stamp token is older than the head" % height)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Chain:
    def __init__(self, origin, key):
        self.origin, self.key = origin, key
        self.prev_hash, self.prev_size, self.prev_time = bytes(32), 0, ""
        self.prev_counter = None

    def check(self, height, text, sig, frontier):
        cp = parse_checkpoint(height, text.decode("utf-8"))
        if cp["height"] != height:
            raise Invalid("head height %d: text is the head of height %d" % (height, cp["height"]))
        if cp["origin"] != self.origin:
            raise Invalid("head height %d: origin %r" % (height, cp["origin"]))
        if cp["prev"] != self.prev_hash:
            raise Invalid("head height %d: anchorlog-prev does not match the previous head" % height)
        if cp["time"] < self.prev_time:
            raise Invalid("head height %d: seal time goes backwards" % height)
        if cp["tree_size"] < self.prev_size:
            raise Invalid("head height %d: tree shrank" % height)
        counter, prev = cp["counter"], self.prev_counter
        if prev is not None:
            if counter is None:
                raise Invalid("head height %d: carries no TPM counter although the previous head does" % height)
            if counter["index"] != prev["index"]:
                raise Invalid("head height %d: TPM counter index changed" % height)
            if counter["value"] <= prev["value"]:
                raise Invalid("head height %d: TPM counter is not greater than the previous head's" % height)
        if not signature_ok(self.key, text, sig):
            raise Invalid("head height %d: signature does not verify" % height)
        if frontier is not None and frontier.root() != cp["root"]:
            raise Invalid("head height %d: root does not match the events" % height)
        self.prev_hash, self.prev_size, self.prev_time = sha256(text), cp["tree_size"], cp["time"]
        self.prev_counter = cp["counter"]
        return cp


def verify(bundle, key, tsa_ca=None, require_timestamps=False):
    tar = tarfile.open(bundle)
    files = {}
    for m in tar.getmembers():
        if m.isfile() and m.name != "entries.jsonl":
            files[m.name] = tar.extractfile(m).read()
    manifest = json.loads(files["manifest.json"])
    if manifest["format"] != "anchorlog-bundle" or manifest["version"] != 1:
        raise ValueError("unknown bundle format")
    chain = Chain(manifest["origin"], key)
    first, end = manifest["first_seq"], manifest["end_seq"]
    lo, hi = manifest["from_height"], manifest["to_height"]

    def head(h):
        try:
            return files["heads/%d.txt" % h], files["heads/%d.sig" % h]
        except KeyError:
            raise Invalid("head height %d: missing" % h)

    if lo > 0:
        anchor = manifest["anchor"]
        subtrees = [base64.b64decode(s, validate=True) for s in anchor["subtrees"]]
        frontier = Frontier(anchor["tree_size"], subtrees)
        text, sig = head(lo - 1)
        cp = parse_checkpoint(lo - 1, text.decode("utf-8"))
        if cp["tree_size"] != first or anchor["tree_size"] != first:
            raise Invalid("head height %d: anchor does not precede the range" % (lo - 1))
        chain.prev_hash = cp["prev"]  # the anchor's own link is outside the bundle
        chain.prev_time = cp["time"]
        chain.check(lo - 1, text, sig, frontier)
    else:
        frontier = Frontier()
    pending = list(range(lo, hi + 1))

    def check_due():
        while pending:
            text, sig = head(pending[0])
            size = parse_checkpoint(pending[0], text.decode("utf-8"))["tree_size"]
            if size != frontier.size:
                if size < frontier.size:
                    raise Invalid("head height %d: tree size %d is behind the events" % (pending[0], size))
                return
            chain.check(pending.pop(0), text, sig, frontier)

    check_due()
    entries = tar.extractfile("entries.jsonl")
    for line in entries:
        seq = frontier.size
        rec = json.loads(line)
        if rec["seq"] != seq:
            raise Invalid("event seq %d: found seq %d in its place" % (seq, rec["seq"]))
        if seq >= end:
            raise Invalid("event seq %d: beyond the last head of the bundle" % seq)
        entry_bytes = rec["entry"].encode("utf-8")
        entry = json.loads(entry_bytes)
        if entry.get("seq") != seq or entry.get("v") != 1 or canonical(entry) != entry_bytes:
            raise Invalid("event seq %d: entry is not the canonical entry of this seq" % seq)
        if rec["body"] is None or rec["salt"] is None:
            if rec["body"] is not None or rec["salt"] is not None or (rec.get("erasure") or {}).get("seq") != seq:
                raise Invalid("event seq %d: incomplete erasure" % seq)
        else:
            payload = base64.b64decode(rec["salt"]) + base64.b64decode(rec["body"])
            if hashlib.sha256(payload).hexdigest() != entry["payload_sha256"]:
                raise Invalid("event seq %d: body does not match payload_sha256" % seq)
        frontier.push(leaf_hash(entry_bytes))
        check_due()
    if pending:
        raise Invalid("head height %d: covers events the bundle does not hold" % pending[0])
    if frontier.size != end:
        raise Invalid("event seq %d: the bundle ends early" % frontier.size)
    untimestamped = []
    if tsa_ca is not None:
        for h in range(lo - 1 if lo > 0 else lo, hi + 1):
            tsr = files.get("heads/%d.tsr" % h)
            if tsr is None:
                if require_timestamps:
                    raise Invalid("head height %d: has no time-stamp token" % h)
                untimestamped.append(h)
                continue
            check_token(h, head(h)[0], tsr, tsa_ca)
    return frontier.size - first, hi - lo + 1, untimestamped


def main():
    args, tsa_ca, require = sys.argv[1:], None, False
    if "--require-timestamps" in args:
        args.remove("--require-timestamps")
        require = True
    if "--tsa-ca" in args:
        i = args.index("--tsa-ca")
        if i + 1 >= len(args):
            print(__doc__.strip(), file=sys.stderr)
            return 2
        tsa_ca = args[i + 1]
        del args[i:i + 2]
    if len(args) != 2 or (require and tsa_ca is None):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        events, heads, untimestamped = verify(args[0], args[1], tsa_ca, require)
    except Invalid as e:
        print("FAILED: %s" % e)
        return 3
    except (OSError, KeyError, ValueError, tarfile.TarError) as e:
        print("unreadable bundle: %r" % e, file=sys.stderr)
        return 1
    if tsa_ca is None:
        print("OK: %d events, %d heads" % (events, heads))
    elif untimestamped:
        print("OK: %d events, %d heads, tokens verified; no token: heights %s"
              % (events, heads, ", ".join(map(str, untimestamped))))
    else:
        print("OK: %d events, %d heads, every token verified" % (events, heads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
