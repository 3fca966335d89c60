#!/usr/bin/env python3
"""Independent check of a witness cosignature, written from docs/FORMAT.md §16 and c2sp.org/tlog-cosignature
only (no anchorlog code): verifies a `cosignature/v1` line against a witness vkey and a checkpoint text.

usage: verify_cosignature.py VKEY CHECKPOINT_FILE LINE
Prints the cosignature's timestamp and exits 0 if it verifies; prints the reason and exits 1 otherwise.
"""
import base64
import hashlib
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(reason):
    print(reason)
    sys.exit(1)


def main():
    vkey, checkpoint_file, line = sys.argv[1], sys.argv[2], sys.argv[3]
    name, key_id_hex, key_b64 = vkey.split("+", 2)
    key = base64.b64decode(key_b64, validate=True)
    if key[0] != 0x04 or len(key) != 33:
        fail("not a cosignature/v1 (type 0x04) Ed25519 vkey")
    public = key[1:]
    key_id = hashlib.sha256(name.encode() + b"\n" + b"\x04" + public).digest()[:4]
    if key_id.hex() != key_id_hex:
        fail("vkey key ID %s does not match the computed %s" % (key_id_hex, key_id.hex()))

    line = line.rstrip("\n")
    prefix = "\u2014 " + name + " "
    if not line.startswith(prefix):
        fail("the line is not by %s" % name)
    blob = base64.b64decode(line[len(prefix):], validate=True)
    if len(blob) != 4 + 8 + 64 or blob[:4] != key_id:
        fail("wrong length or key ID")
    (timestamp,) = struct.unpack(">Q", blob[4:12])

    with open(checkpoint_file, "rb") as f:
        text = f.read()
    message = b"cosignature/v1\ntime %d\n" % timestamp + text
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(blob[12:], message)
    except InvalidSignature:
        fail("the signature does not verify")
    print(timestamp)


if __name__ == "__main__":
    main()
