#!/usr/bin/env python3
"""Verifies one Standard Webhooks request (https://www.standardwebhooks.com), symmetric v1.

An implementation of the receiver's side written from the specification alone, with the
standard library only (hmac, hashlib, base64), so canaryd's signature is checked by code
that shares nothing with canaryd's. tests/it/webhook_signature.rs runs it.

Input on stdin, one JSON object:
  {"id": "<webhook-id>", "timestamp": "<webhook-timestamp>", "signature": "<webhook-signature>",
   "body": "<the raw body, base64>", "secret": "<whsec_<base64> or the key's text>",
   "now": <unix seconds, optional: the clock to judge the timestamp by>}
Exit 0 and "ok" when the request is authentic and fresh; exit 1 and the reason otherwise.
"""

import base64
import binascii
import hashlib
import hmac
import json
import sys
import time

TOLERANCE_SECONDS = 5 * 60


def key_of(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):], validate=True)
    return secret.encode()


def verify(msg_id: str, timestamp: str, signatures: str, body: bytes, secret: str, now: int) -> str:
    """The empty string when valid, otherwise why not."""
    if not msg_id or "." in msg_id:
        return "bad webhook-id"
    try:
        ts = int(timestamp)
    except ValueError:
        return "bad webhook-timestamp"
    if ts < now - TOLERANCE_SECONDS:
        return "timestamp too old"
    if ts > now + TOLERANCE_SECONDS:
        return "timestamp too new"
    try:
        key = key_of(secret)
    except binascii.Error:
        return "bad secret"
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return ""
    return "no matching signature"


def main() -> int:
    request = json.load(sys.stdin)
    problem = verify(
        request["id"],
        request["timestamp"],
        request["signature"],
        base64.b64decode(request["body"]),
        request["secret"],
        int(request.get("now", time.time())),
    )
    if problem:
        print(problem)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
