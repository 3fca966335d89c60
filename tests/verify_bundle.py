#!/usr/bin/env python3
"""An independent verifier for anchorlog export bundles, written from docs/FORMAT.md alone.

Uses the Python standard library (tarfile, json, hashlib, base64), the `openssl` command line for ECDSA
signatures and RFC 3161 tokens, and — only with --witness — `cryptography` for Ed25519 cosignatures.
Usage: verify_bundle.py BUNDLE.tar (SIGNER.pem | [SIGNER.pem] --keyring NODES.pem) [--origin ORIGIN]
       [--tsa-ca TSA-CA.pem [--require-timestamps] [--max-timestamp-delay SECONDS]]
       [--witness VKEY-or-FILE ... [--witness-quorum K]]
Every head must carry ORIGIN (default: the manifest's). An erased payload verifies only with the appliance's
erasure record naming it, in entries.jsonl under a head of the bundle, or in erasure-records.jsonl with its
inclusion and consistency proofs. With --tsa-ca every heads/<h>.tsr is checked with `openssl ts -verify`, its
genTime against the head's seal time (at most 300 s earlier, at most SECONDS later — default 600 — unless the
log records a timestamping outage around the head), and genTimes must not go backwards along the chain; a head
without a token is listed, or fails with --require-timestamps.
Keys rotate only through the appliance's key rotation record (FORMAT.md §20): the head that ends with it is the
old key's last, every later head is the new key's. SIGNER.pem is the key the chain starts with (the log's first key
will do): rotations inside the range are followed as the walk meets them, those before it (and after it, for
erasure record proofs) from key-rotations.jsonl with their inclusion and consistency proofs.
With --keyring (FORMAT.md §20, "Keyrings": the PEM keys or certificates of the log's nodes, one block after another,
plus SIGNER.pem if given) any key of the ring may sign any head, so heads pass between nodes without a rotation
record; a rotation record retires its old key for good and brings its new key into the ring; a head's TPM counter
continues the last head its own key signed. A head signed outside the ring, or by a retired key, fails at its height.
The report says which key signed which heads.
With --witness (repeatable: a witness's cosignature/v1 vkey, or a file holding it) the cosignature lines in every
heads/<h>.note are checked (FORMAT.md §16): the note's text must be heads/<h>.txt, a line of a listed witness must
verify (Ed25519 over "cosignature/v1\ntime T\n" + text) and not be dated more than 300 s before the head's seal
time, lines of other keys are ignored, and the last head must carry K (default: all listed) distinct listed
witnesses' cosignatures.
Exit codes: 0 the bundle verifies, 3 it does not (the first bad seq or height is printed), 1 unreadable input.
"""
import atexit
import base64
import datetime
import hashlib
import json
import os
import re
import shutil
import struct
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


APPLIANCE = "anchorlog"


def is_appliance_entry(entry):
    """The appliance's own records: producer, source and format `anchorlog`, auth `internal` (FORMAT.md §1)."""
    return entry.get("auth") == "internal" and all(entry.get(k) == APPLIANCE for k in ("producer", "source", "format"))


def appliance_body(entry, body_b64):
    """The JSON body of an appliance record, or None for anything else."""
    if body_b64 is None or not is_appliance_entry(entry):
        return None
    try:
        body = json.loads(base64.b64decode(body_b64))
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def largest_power_of_two_below(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size, new_size, old_root, new_root, proof):
    """RFC 9162 §2.1.4.2 (with old == new: equal roots and an empty proof)."""
    if old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    if old_size & (old_size - 1) == 0:
        proof = [old_root] + list(proof)
    if not proof:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


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
MAX_DELAY = datetime.timedelta(seconds=600)


def token_problem(text, tsr, ca):
    """Why the DER TimeStampResp `tsr` is not a valid token over `text` under `ca`, or its genTime.

    OpenSSL does the RFC 5280 path validation (keyCertSign and basicConstraints cA of the CAs, pathLen, unknown
    critical extensions refused) at the token's genTime (`-attime`), as FORMAT.md §6 requires, not at today's date."""
    with tempfile.TemporaryDirectory() as d:
        t, r = os.path.join(d, "head.txt"), os.path.join(d, "head.tsr")
        with open(t, "wb") as f:
            f.write(text)
        with open(r, "wb") as f:
            f.write(tsr)
        info = subprocess.run(["openssl", "ts", "-reply", "-in", r, "-text"], capture_output=True, text=True)
        gen_time = None
        for line in info.stdout.splitlines():
            if line.startswith("Time stamp: "):
                # e.g. "Nov 23 13:00:00 2026 GMT" or "Nov 23 13:00:00.123 2026 GMT"
                parts = line[len("Time stamp: "):].split()
                clock = parts[2].split(".")[0]
                stamp = " ".join(parts[0:2] + [clock, parts[3]])
                gen_time = datetime.datetime.strptime(stamp, "%b %d %H:%M:%S %Y").replace(
                    tzinfo=datetime.timezone.utc)
        if gen_time is None:
            return "no genTime in the token"
        v = subprocess.run(["openssl", "ts", "-verify", "-data", t, "-in", r, "-CAfile", ca,
                            "-attime", str(int(gen_time.timestamp()))], capture_output=True, text=True)
        if v.returncode != 0 or "Verification: OK" not in v.stdout:
            return "openssl ts -verify failed"
    return gen_time


def utc_ms(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)


def check_token(height, text, tsr, ca, previous, outages, max_delay):
    """Checks one token; `previous` is (height, genTime) of the last checked token. Returns its genTime."""
    sealed = parse_checkpoint(height, text.decode("utf-8"))["time"]
    sealed = datetime.datetime.strptime(sealed[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    got = token_problem(text, tsr, ca)
    if isinstance(got, str):
        raise Invalid("head height %d: time-stamp token does not verify (%s)" % (height, got))
    # genTime is truncated to the second here, the seal time too: compare with one second of slack.
    if got + datetime.timedelta(seconds=1) < sealed - MAX_SKEW:
        raise Invalid("head height %d: time-stamp token is older than the head" % height)
    if previous is not None and got + datetime.timedelta(seconds=1) < previous[1] - MAX_SKEW:
        raise Invalid("head height %d: its token's genTime is earlier than head height %d's" % (height, previous[0]))
    if got - sealed > max_delay + datetime.timedelta(seconds=1):
        # Excused only inside a timestamping outage the log records (FORMAT.md §6).
        excused = False
        for since, end in outages:
            began = utc_ms(since) - max_delay <= sealed + datetime.timedelta(seconds=1)
            if end is None:
                excused = excused or began
            else:
                excused = excused or (began and sealed <= utc_ms(end) and got <= utc_ms(end) + max_delay)
        if not excused:
            raise Invalid("head height %d: its token was issued %d s after the head's seal time, with no recorded "
                          "timestamping outage around it" % (height, (got - sealed).total_seconds()))
    return got


def parse_vkey(text):
    """A cosignature/v1 vkey `name+keyid+base64(0x04 || key)` -> (name, key ID bytes, 32-byte public key)."""
    name, key_id_hex, key_b64 = text.strip().split("+", 2)
    key = base64.b64decode(key_b64, validate=True)
    if len(key) != 33 or key[0] != 0x04:
        raise ValueError("%s is not a cosignature/v1 (type 0x04) Ed25519 vkey" % name)
    key_id = hashlib.sha256(name.encode() + b"\n" + key[:1] + key[1:]).digest()[:4]
    if key_id.hex() != key_id_hex:
        raise ValueError("vkey %s: key ID %s does not match the key" % (name, key_id_hex))
    return name, key_id, key[1:]


def sealed_seconds(text):
    """The head's anchorlog-time as seconds since the epoch (a float)."""
    t = parse_checkpoint(-1, text.decode("utf-8"))["time"]
    dt = datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


def note_cosigners(height, text, note, witnesses):
    """The listed witnesses (indexes) whose cosignature line in `note` verifies over `text`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    split = note.rfind(b"\n\n")
    if split < 0 or note[:split + 1] != text:
        raise Invalid("head height %d: heads/%d.note carries another text than heads/%d.txt" % (height, height, height))
    found = set()
    for line in note[split + 2:].decode("utf-8").split("\n")[:-1]:
        if not line.startswith("\u2014 ") or " " not in line[2:]:
            raise Invalid("head height %d: heads/%d.note has a malformed signature line" % (height, height))
        name, b64 = line[2:].split(" ", 1)
        blob = base64.b64decode(b64, validate=True)
        listed = [i for i, (n, key_id, _) in enumerate(witnesses) if n == name and key_id == blob[:4]]
        if not listed:
            continue  # not a listed witness: ignored
        i = listed[0]
        bad = Invalid("head height %d: the cosignature of listed witness %s does not verify" % (height, name))
        if len(blob) != 4 + 8 + 64:
            raise bad
        (t,) = struct.unpack(">Q", blob[4:12])
        try:
            Ed25519PublicKey.from_public_bytes(witnesses[i][2]).verify(
                blob[12:], b"cosignature/v1\ntime %d\n" % t + text)
        except InvalidSignature:
            raise bad
        if t < sealed_seconds(text) - MAX_SKEW.total_seconds():
            raise Invalid("head height %d: the cosignature of listed witness %s is dated before the head" % (height, name))
        found.add(i)
    return found


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


KEY_ID = re.compile(r"[0-9a-f]{64}")
PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.S)
COUNTER_INDEX = re.compile(r"0x[0-9a-f]{8}")


class Key:
    """A head-signing public key: a PEM file openssl reads, and its key id (hex SHA-256 of the SPKI DER)."""

    def __init__(self, path):
        der = subprocess.run(["openssl", "pkey", "-pubin", "-in", path, "-outform", "DER"], capture_output=True)
        if der.returncode != 0:
            raise ValueError("%s is not a PEM public key" % path)
        self.path, self.key_id = path, hashlib.sha256(der.stdout).hexdigest()

    @staticmethod
    def from_pem(pem, workdir):
        path = os.path.join(workdir, "key-%d.pem" % len(os.listdir(workdir)))
        with open(path, "w") as f:
            f.write(pem)
        return Key(path)


def read_keyring(path):
    """A keyring file (FORMAT.md §20): the nodes' PEM public keys or certificates, one block after another."""
    workdir = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, workdir, True)
    with open(path) as f:
        blocks = [m.group(0) for m in PEM_BLOCK.finditer(f.read())]
    if not blocks:
        raise ValueError("keyring %s holds no PEM block: give the signer keys of the log's nodes as PEM public keys "
                         "or certificates, one after another" % path)
    keys = []
    for i, block in enumerate(blocks):
        if block.startswith("-----BEGIN CERTIFICATE-----"):
            block = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=block, capture_output=True,
                                   text=True).stdout
        try:
            keys.append(Key.from_pem(block, workdir))
        except ValueError:
            raise ValueError("keyring %s: block %d of %d is not a PEM public key or certificate"
                             % (path, i + 1, len(blocks)))
    return keys


def rotation_record(seq, body, workdir):
    """The checked fields of a key rotation record's body (FORMAT.md §20), with the new key."""
    bad = lambda why: Invalid("event seq %d: key rotation record is invalid: %s" % (seq, why))
    for k in ("old_key_id", "new_key_id"):
        if not isinstance(body.get(k), str) or not KEY_ID.fullmatch(body[k]):
            raise bad("%s is not 64 lower-case hex digits" % k)
    pem = body.get("new_public_key")
    if not isinstance(pem, str) or "-----BEGIN PUBLIC KEY-----" not in pem:
        raise bad("new_public_key is not a PEM public key")
    try:
        new = Key.from_pem(pem, workdir)
    except ValueError:
        raise bad("new_public_key is not a public key")
    if new.key_id != body["new_key_id"] or new.key_id == body["old_key_id"]:
        raise bad("new_public_key does not match new_key_id, or is the old key")
    reason = body.get("reason")
    if not isinstance(reason, str) or not 1 <= len(reason.encode("utf-8")) <= 1024:
        raise bad("reason must be 1 to 1024 bytes")
    if "new_counter_index" not in body:
        raise bad("new_counter_index is missing")
    index = body["new_counter_index"]
    if index is not None and not (isinstance(index, str) and COUNTER_INDEX.fullmatch(index)):
        raise bad("new_counter_index is malformed")
    return {"seq": seq, "old": body["old_key_id"], "new": new, "reason": reason,
            "counter": None if index is None else int(index, 16)}


def outside_ring(height, text, sig, ring, retired, known):
    """Keyring: why no key of `ring` signed the head: a `retired` key, a `known` key (the bundle's keys/) outside the
    ring, or none of them."""
    ids = ", ".join(k.key_id for k in ring)
    for key, seq, last in retired.values():
        if signature_ok(key.path, text, sig):
            return Invalid("head height %d: signed by key %s, which the key rotation record at event seq %d retired "
                           "after head height %d; later heads must be signed by one of the keyring's keys (%s)"
                           % (height, key.key_id, seq, last, ids))
    for key in known:
        if signature_ok(key.path, text, sig):
            return Invalid("head height %d: signed by key %s, which is not in the keyring (%s); add it only if it is "
                           "the signing key of one of the log's nodes" % (height, key.key_id, ids))
    return Invalid("head height %d: signature verifies under no key of the keyring (%s)" % (height, ids))


class Chain:
    def __init__(self, origin, key, ring=None, known=()):
        self.origin, self.key = origin, key  # the key heads are signed with from here on
        self.prev_hash, self.prev_size, self.prev_time = bytes(32), 0, ""
        self.prev_counter = None
        self.retired = {}  # key id -> (key, seq of the record that retired it, height of its last head)
        self.pending = None  # a rotation record no head covers yet
        self.announced = None  # after a rotation head: (record seq, counter index) for the next head
        self.rotations = []
        self.signers = []  # [key id, first height, last height]: which key signed which heads
        # Keyring mode (FORMAT.md §20, "Keyrings"): the keys that may sign the next head, each key's TPM counter at
        # the last head it signed, and the new key of the last rotation until it signs its first head.
        self.ring, self.counters, self.announced_key = ring, {}, None
        self.known = known  # the bundle's keys/: only to name the signer of a head outside the ring

    def switch_signer(self, text, sig):
        """Keyring: the ring key that signed the head becomes the chain's key, and the counter the head must exceed
        is the one that key's own last head carried (none before its first). None when no ring key signed it."""
        if self.key is not None and signature_ok(self.key.path, text, sig):
            return self.key
        for k in self.ring:
            if k is not self.key and signature_ok(k.path, text, sig):
                if self.key is not None:
                    self.counters[self.key.key_id] = self.prev_counter
                self.prev_counter, self.key = self.counters.get(k.key_id), k
                return k
        return None

    def rotation(self, record, next_height):
        if self.pending is not None:
            raise Invalid("event seq %d: key rotation record is not the last event of head height %d"
                          % (self.pending["seq"], next_height))
        self.pending = record

    def rotate(self, height, record):
        """Head `height` (verified under self.key) ends with `record`: later heads are signed by its new key."""
        if record["old"] != self.key.key_id:
            raise Invalid("event seq %d: key rotation record is invalid: it names another old key than head "
                          "height %d's" % (record["seq"], height))
        if record["new"].key_id in self.retired:
            raise Invalid("event seq %d: key rotation record is invalid: its new key was retired before"
                          % record["seq"])
        self.retired[self.key.key_id] = (self.key, record["seq"], height)
        if self.ring is not None:
            self.ring = [k for k in self.ring if k.key_id != self.key.key_id] + [record["new"]]
            self.announced_key = record["new"].key_id
        self.key = record["new"]
        self.announced = (record["seq"], record["counter"])
        self.rotations.append((height, record["seq"]))

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
        # Keyring: the signer decides which key's counter the head continues, so it is found first.
        signer = self.switch_signer(text, sig) if self.ring is not None else self.key
        counter, prev = cp["counter"], self.prev_counter
        if self.announced is not None and (self.ring is None or self.key.key_id == self.announced_key):
            # The first head under a new key carries exactly the counter its rotation record announced (with a
            # keyring: the first head the new key signs); another index than the previous head's restarts the
            # chain of counters.
            seq, index = self.announced
            self.announced, self.announced_key = None, None
            if (counter["index"] if counter else None) != index:
                raise Invalid("head height %d: the first head under the new key carries another TPM counter than "
                              "the key rotation record at event seq %d announced" % (height, seq))
            if prev is not None and prev["index"] != index:
                prev = None
        if prev is not None:
            if counter is None:
                raise Invalid("head height %d: carries no TPM counter although the previous head does" % height)
            if counter["index"] != prev["index"]:
                raise Invalid("head height %d: TPM counter index changed" % height)
            if counter["value"] <= prev["value"]:
                whose = "" if self.ring is None else " (the last head key %s signed)" % self.key.key_id
                raise Invalid("head height %d: TPM counter %d is not greater than the previous head's %d%s"
                              % (height, counter["value"], prev["value"], whose))
        if signer is None:
            raise outside_ring(height, text, sig, self.ring, self.retired, self.known)
        if self.ring is None and not signature_ok(self.key.path, text, sig):
            raise Invalid("head height %d: signature does not verify" % height)
        if self.signers and self.signers[-1][0] == self.key.key_id and self.signers[-1][2] == height - 1:
            self.signers[-1][2] = height
        else:
            self.signers.append([self.key.key_id, height, height])
        if frontier is not None and frontier.root() != cp["root"]:
            raise Invalid("head height %d: root does not match the events" % height)
        if self.pending is not None:
            record, self.pending = self.pending, None
            if cp["tree_size"] != record["seq"] + 1:
                raise Invalid("event seq %d: key rotation record is not the last event of head height %d"
                              % (record["seq"], height))
            self.rotate(height, record)
        self.prev_hash, self.prev_size, self.prev_time = sha256(text), cp["tree_size"], cp["time"]
        self.prev_counter = cp["counter"]
        return cp


def consistent(size_a, root_a, size_b, root_b, proof):
    """A consistency proof between two trees, from the smaller to the larger."""
    if size_a <= size_b:
        return verify_consistency(size_a, size_b, root_a, root_b, proof)
    return verify_consistency(size_b, size_a, root_b, root_a, proof)


def checked_rotation_proofs(proofs, origin, ref_size, ref_root, workdir):
    """Each key-rotations.jsonl proof (seq order) whose record is the appliance's, ends a head of the log (tree size
    seq + 1) and is consistent with the reference head: yields (record, proof head). Signatures are left to callers."""
    for p in proofs:
        seq, h = p["seq"], p["head"]
        entry_bytes = p["entry"].encode("utf-8")
        entry = json.loads(entry_bytes)
        if entry.get("seq") != seq or canonical(entry) != entry_bytes:
            raise Invalid("event seq %d: entry is not the canonical entry of this seq" % seq)
        payload = base64.b64decode(p["salt"]) + base64.b64decode(p["body"])
        if hashlib.sha256(payload).hexdigest() != entry["payload_sha256"]:
            raise Invalid("event seq %d: body does not match payload_sha256" % seq)
        body = appliance_body(entry, p["body"])
        if body is None or body.get("type") != "anchorlog.key_rotation":
            raise Invalid("event seq %d: key rotation record is invalid: not the appliance's key rotation record" % seq)
        record = rotation_record(seq, body, workdir)
        cp = parse_checkpoint(h["height"], h["checkpoint"])
        if cp["height"] != h["height"] or cp["origin"] != origin:
            raise Invalid("head height %d: does not prove key rotation record seq %d" % (h["height"], seq))
        if cp["tree_size"] != seq + 1:
            raise Invalid("event seq %d: key rotation record is not the last event of head height %d" % (seq, h["height"]))
        if not verify_inclusion(seq, cp["tree_size"], leaf_hash(entry_bytes),
                                [base64.b64decode(x) for x in p["inclusion_proof"]], cp["root"]):
            raise Invalid("event seq %d: the inclusion proof does not lead to head height %d" % (seq, h["height"]))
        if not consistent(cp["tree_size"], cp["root"], ref_size, ref_root,
                          [base64.b64decode(x) for x in p["consistency_proof"]]):
            raise Invalid("head height %d: the consistency proof does not verify" % h["height"])
        yield record, h


def proof_signed_by(key, h):
    return signature_ok(key.path, h["checkpoint"].encode("utf-8"), base64.b64decode(h["signature"]))


def follow_rotations(proofs, key, origin, ref_size, ref_root, workdir):
    """Follows key-rotations.jsonl proofs (seq order) from `key`: each record must name the chain's key as its old
    key, end a head signed by it (tree size seq + 1) that is consistent with the reference head, and hand over to its
    new key. Returns [(last height, key)] spans (the last open-ended) and the retired keys."""
    spans, current, retired = [], None, {}
    for record, h in checked_rotation_proofs(proofs, origin, ref_size, ref_root, workdir):
        seq = record["seq"]
        if current is None:
            if record["old"] != key.key_id:
                continue  # signed by a key this verifier does not know: trust starts later
            current = key
        if record["old"] != current.key_id or record["new"].key_id in retired:
            raise Invalid("event seq %d: key rotation record is invalid: it does not continue the key chain" % seq)
        if not proof_signed_by(current, h):
            raise Invalid("head height %d: signature does not verify with key %s" % (h["height"], current.key_id))
        spans.append((h["height"], current, seq, record["counter"]))
        retired[current.key_id] = (current, seq, h["height"])
        current = record["new"]
    if current is not None:
        spans.append((float("inf"), current, None, None))
    return spans, retired


def follow_ring_rotations(proofs, ring, origin, ref_size, ref_root, workdir):
    """Keyring (FORMAT.md §20): each node's key has its own chain of rotations. A proof whose old key is a ring key not
    yet retired must have its head signed by that key, which signs no later head; its new key joins the ring after
    that head. A proof whose old key is none of them cannot be checked and is skipped. Returns the ring as
    [key, height after which it may sign or None, last height it may sign or None], the retired keys, and the
    rotations as {height of the old key's last head: (seq, new key, announced counter index)}."""
    keys, retired, handovers = [[k, None, None] for k in ring], {}, {}
    for record, h in checked_rotation_proofs(proofs, origin, ref_size, ref_root, workdir):
        seq = record["seq"]
        old = [k for k in keys if k[2] is None and k[0].key_id == record["old"]]
        if not old:
            continue
        if not proof_signed_by(old[0][0], h):
            raise Invalid("event seq %d: key rotation record is invalid: head height %d, which ends with it, is not "
                          "signed by its old key %s" % (seq, h["height"], record["old"]))
        if any(k[0].key_id == record["new"].key_id for k in keys):
            raise Invalid("event seq %d: key rotation record is invalid: its new key %s is already a key of the ring"
                          % (seq, record["new"].key_id))
        old[0][2] = h["height"]
        retired[record["old"]] = (old[0][0], seq, h["height"])
        keys.append([record["new"], h["height"], None])
        handovers[h["height"]] = (seq, record["new"], record["counter"])
    return keys, retired, handovers


def ring_at(ring, height):
    """The keys of a followed ring that may sign head `height`."""
    return [k for k, after, until in ring if (after is None or height > after) and (until is None or height <= until)]


def key_for(spans, height, default):
    for last, key, _, _ in spans:
        if last >= height:
            return key
    return default


def check_erasure_record(rec, keys, origin, last_height, last_size, last_root, unsigned=None):
    """An erasure record carried in erasure-records.jsonl (FORMAT.md §8): the appliance's record of its event,
    in a signed head at or after the bundle's last one, which extends that last head. `keys(h)`: the keys that may
    sign head h; `unsigned(h, text, sig)`: the failure when none of them signed it."""
    erased, seq = rec["erased_seq"], rec["seq"]
    bad = Invalid("event seq %d: its erasure record (seq %d) is not the appliance's record of it" % (erased, seq))
    entry_bytes = rec["entry"].encode("utf-8")
    entry = json.loads(entry_bytes)
    if seq <= erased or entry.get("seq") != seq or canonical(entry) != entry_bytes:
        raise bad
    payload = base64.b64decode(rec["salt"]) + base64.b64decode(rec["body"])
    if hashlib.sha256(payload).hexdigest() != entry["payload_sha256"]:
        raise bad
    body = appliance_body(entry, rec["body"])
    if body is None or body.get("type") != "anchorlog.erasure" or body.get("erased_seq") != erased:
        raise bad
    h = rec["head"]
    text = h["checkpoint"].encode("utf-8")
    cp = parse_checkpoint(h["height"], h["checkpoint"])
    if cp["height"] != h["height"] or cp["origin"] != origin or h["height"] < last_height or cp["tree_size"] <= seq:
        raise Invalid("head height %d: does not prove erasure record seq %d" % (h["height"], seq))
    sig = base64.b64decode(h["signature"])
    if not any(signature_ok(k.path, text, sig) for k in keys(h["height"])):
        raise unsigned(h["height"], text, sig) if unsigned else Invalid("head height %d: signature does not verify"
                                                                        % h["height"])
    inclusion = [base64.b64decode(x) for x in rec["inclusion_proof"]]
    if not verify_inclusion(seq, cp["tree_size"], leaf_hash(entry_bytes), inclusion, cp["root"]):
        raise Invalid("event seq %d: the inclusion proof does not lead to head height %d" % (seq, h["height"]))
    consistency = [base64.b64decode(x) for x in rec["consistency_proof"]]
    if not verify_consistency(last_size, cp["tree_size"], last_root, cp["root"], consistency):
        raise Invalid("head height %d: the consistency proof from tree size %d does not verify"
                      % (h["height"], last_size))
    return erased, seq


def verify(bundle, key, tsa_ca=None, require_timestamps=False, origin=None, max_delay=MAX_DELAY, witnesses=(),
           quorum=0, ring=None):
    """`key`: the key the chain starts with; or `ring`: a keyring, every key of which may sign any head."""
    tar = tarfile.open(bundle)
    files = {}
    for m in tar.getmembers():
        if m.isfile() and m.name != "entries.jsonl":
            files[m.name] = tar.extractfile(m).read()
    manifest = json.loads(files["manifest.json"])
    if manifest["format"] != "anchorlog-bundle" or manifest["version"] not in (1, 2):
        raise ValueError("unknown bundle format")
    if origin is not None and manifest["origin"] != origin:
        raise Invalid("head height %d: origin %r is not the expected %r" % (manifest["from_height"], manifest["origin"], origin))
    workdir = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, workdir, True)
    first, end = manifest["first_seq"], manifest["end_seq"]
    lo, hi = manifest["from_height"], manifest["to_height"]
    rotations = [json.loads(l) for l in files.get("key-rotations.jsonl", b"").splitlines() if l.strip()]
    before = [r for r in rotations if r["seq"] < first]
    after = [r for r in rotations if r["seq"] >= end]
    known = [Key.from_pem(files[n].decode("utf-8"), workdir) for n in files if n.startswith("keys/")] if ring else []
    chain = Chain(manifest["origin"], key, ring, known)

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
        if ring is not None:
            # The rotations before the range, followed per key: the anchor's signer must be a ring key at its height.
            followed, chain.retired, handovers = follow_ring_rotations(
                before, ring, manifest["origin"], cp["tree_size"], cp["root"], workdir)
            chain.ring = ring_at(followed, lo - 1)
            chain.check(lo - 1, text, sig, frontier)
            chain.ring = ring_at(followed, lo)
            if lo - 1 in handovers:  # the anchor is a rotated key's last head: its new key's first head binds
                seq, chain.key, index = handovers[lo - 1]
                chain.announced, chain.announced_key = (seq, index), chain.key.key_id
        else:
            # The rotations before the range lead from the given key to the anchor's.
            spans, chain.retired = follow_rotations(before, key, manifest["origin"], cp["tree_size"], cp["root"],
                                                    workdir)
            chain.key = key_for(spans, lo - 1, key)
            chain.check(lo - 1, text, sig, frontier)
            chain.key = key_for(spans, lo, key)  # the new key when the anchor is the old key's last head
            for last, _, seq, index in spans:
                if last == lo - 1:
                    chain.announced = (seq, index)
        chain.signers = []  # the anchor is outside the range
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
    pending_erasures = {}  # record seq -> erased seq
    recorded = []  # (erased seq, record seq) met in entries.jsonl
    open_outages, outages = [], []  # timestamping outages: since_ms; (since_ms, end_ms or None)
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
            erasure = rec.get("erasure") or {}
            if rec["body"] is not None or rec["salt"] is not None or erasure.get("seq") != seq:
                raise Invalid("event seq %d: incomplete erasure" % seq)
            claimed = erasure.get("erasure_seq")
            if not isinstance(claimed, int) or claimed <= seq or claimed in pending_erasures:
                raise Invalid("event seq %d: body and salt are erased but no erasure record accounts for it" % seq)
            pending_erasures[claimed] = seq
        else:
            payload = base64.b64decode(rec["salt"]) + base64.b64decode(rec["body"])
            if hashlib.sha256(payload).hexdigest() != entry["payload_sha256"]:
                raise Invalid("event seq %d: body does not match payload_sha256" % seq)
        body = appliance_body(entry, rec["body"])
        if body is not None and body.get("type") == "anchorlog.key_rotation":
            chain.rotation(rotation_record(seq, body, workdir), pending[0] if pending else hi + 1)
        if seq in pending_erasures:
            erased = pending_erasures.pop(seq)
            if body is None or body.get("type") != "anchorlog.erasure" or body.get("erased_seq") != erased:
                raise Invalid("event seq %d: its payload is erased, but event seq %d is not the appliance's erasure "
                              "record of it" % (erased, seq))
            recorded.append((erased, seq))
        if body is not None and body.get("component") == "timestamping" and isinstance(body.get("since_ms"), int):
            at_ms = entry["received_at_ns"] // 1_000_000
            if body.get("type") == "anchorlog.outage" and body.get("state") == "started":
                open_outages.append(body["since_ms"])
            elif body.get("type") == "anchorlog.outage" and body.get("state") == "ended":
                open_outages = [s for s in open_outages if s != body["since_ms"]]
                outages.append((body["since_ms"], at_ms))
        if body is not None and body.get("type") == "anchorlog.clock_jump":
            old, new = body.get("old_time_ms"), body.get("new_time_ms")
            # A backward jump holds seal times while a TSA stamps at its own time: a window for the delay check
            # from the new time to the old time plus the jump (FORMAT.md §21).
            if isinstance(old, int) and isinstance(new, int) and new < old:
                outages.append((new, old + (old - new)))
        # A new run (a start, or on a shared PostgreSQL log another node's takeover) closes open outages.
        if body is not None and body.get("type") in ("anchorlog.start", "anchorlog.takeover"):
            outages.extend((since, entry["received_at_ns"] // 1_000_000) for since in open_outages)
            open_outages = []
        frontier.push(leaf_hash(entry_bytes))
        check_due()
    if pending:
        raise Invalid("head height %d: covers events the bundle does not hold" % pending[0])
    if frontier.size != end:
        raise Invalid("event seq %d: the bundle ends early" % frontier.size)
    outages.extend((since, None) for since in open_outages)
    # Erasures made after the last head travel with their records and proofs.
    last_text = head(hi)[0]
    last = parse_checkpoint(hi, last_text.decode("utf-8"))
    # The rotations after the range lead from the last head's key (or the ring's keys, each followed on its own) to
    # the keys of the erasure records' heads.
    unsigned = None
    if ring is not None:
        followed, retired, _ = follow_ring_rotations(after, chain.ring, manifest["origin"], end, last["root"], workdir)
        keys_at = lambda h: ring_at(followed, h)
        unsigned = lambda h, text, sig: outside_ring(h, text, sig, keys_at(h), {**chain.retired, **retired}, known)
    else:
        spans, _ = follow_rotations(after, chain.key, manifest["origin"], end, last["root"], workdir)
        keys_at = lambda h: [key_for(spans, h, chain.key)]
    carried = {}
    for line in files.get("erasure-records.jsonl", b"").splitlines():
        if line.strip():
            erased, seq = check_erasure_record(json.loads(line), keys_at, manifest["origin"], hi, end, last["root"],
                                               unsigned)
            carried[erased] = seq
    for record_seq, erased in sorted(pending_erasures.items(), key=lambda kv: kv[1]):
        if carried.get(erased) != record_seq:
            raise Invalid("event seq %d: its payload is erased, but its erasure record (event seq %d) is not there"
                          % (erased, record_seq))
    untimestamped = []
    if tsa_ca is not None:
        previous = None
        for h in range(lo - 1 if lo > 0 else lo, hi + 1):
            tsr = files.get("heads/%d.tsr" % h)
            if tsr is None:
                if require_timestamps:
                    raise Invalid("head height %d: has no time-stamp token" % h)
                untimestamped.append(h)
                continue
            previous = (h, check_token(h, head(h)[0], tsr, tsa_ca, previous, outages, max_delay))
    cosigned_last = None
    if witnesses:
        for h in range(lo - 1 if lo > 0 else lo, hi + 1):
            note = files.get("heads/%d.note" % h)
            found = note_cosigners(h, head(h)[0], note, witnesses) if note is not None else set()
            if h == hi:
                cosigned_last = sorted(witnesses[i][0] for i in found)
        if len(cosigned_last) < quorum:
            raise Invalid("head height %d: cosigned by %d of the %d listed witnesses required"
                          % (hi, len(cosigned_last), quorum))
    return frontier.size - first, hi - lo + 1, untimestamped, (hi, cosigned_last), chain.rotations, chain.signers


def take_option(args, name):
    if name not in args:
        return None
    i = args.index(name)
    if i + 1 >= len(args):
        raise IndexError(name)
    value = args[i + 1]
    del args[i:i + 2]
    return value


def main():
    args, tsa_ca, require = sys.argv[1:], None, False
    if "--require-timestamps" in args:
        args.remove("--require-timestamps")
        require = True
    witnesses = []
    try:
        origin = take_option(args, "--origin")
        delay = take_option(args, "--max-timestamp-delay")
        max_delay = MAX_DELAY if delay is None else datetime.timedelta(seconds=int(delay))
        while "--witness" in args:
            value = take_option(args, "--witness")
            if os.path.isfile(value):
                with open(value) as f:
                    value = f.read()
            witnesses.append(parse_vkey(value))
        quorum = take_option(args, "--witness-quorum")
        quorum = len(witnesses) if quorum is None else int(quorum)
        if witnesses and not 1 <= quorum <= len(witnesses):
            raise ValueError("--witness-quorum")
    except (IndexError, ValueError) as e:
        print("%s\n%s" % (e, __doc__.strip()), file=sys.stderr)
        return 2
    if "--tsa-ca" in args:
        i = args.index("--tsa-ca")
        if i + 1 >= len(args):
            print(__doc__.strip(), file=sys.stderr)
            return 2
        tsa_ca = args[i + 1]
        del args[i:i + 2]
    try:
        keyring = take_option(args, "--keyring")
    except IndexError:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if len(args) not in ((1, 2) if keyring else (2,)) or (require and tsa_ca is None):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        key, ring = Key(args[1]) if len(args) == 2 else None, None
        if keyring:
            # SIGNER.pem, if given, joins the ring; a key given twice counts once.
            ring = list({k.key_id: k for k in ([key] if key else []) + read_keyring(keyring)}.values())
            key = None
    except OSError as e:
        print("cannot read %s: %s" % (e.filename, e.strerror), file=sys.stderr)
        return 1
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    try:
        events, heads, untimestamped, (last, cosigned), rotations, signers = verify(
            args[0], key, tsa_ca, require, origin, max_delay, witnesses, quorum, ring)
    except Invalid as e:
        print("FAILED: %s" % e)
        return 3
    except (OSError, KeyError, ValueError, tarfile.TarError) as e:
        print("unreadable bundle: %r" % e, file=sys.stderr)
        return 1
    for height, seq in rotations:
        print("key rotation: after head height %d (record at event seq %d)" % (height, seq))
    if ring is not None:
        for key_id, first, last_height in signers:
            print("signer: heads %d..=%d signed by key %s" % (first, last_height, key_id))
    if witnesses:
        print("OK: %d events, %d heads, head height %d cosigned by %d of the %d required witnesses (%s)"
              % (events, heads, last, len(cosigned), quorum, ", ".join(cosigned)))
    elif tsa_ca is None:
        print("OK: %d events, %d heads" % (events, heads))
    elif untimestamped:
        print("OK: %d events, %d heads, tokens verified; no token: heights %s"
              % (events, heads, ", ".join(map(str, untimestamped))))
    else:
        print("OK: %d events, %d heads, every token verified" % (events, heads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
