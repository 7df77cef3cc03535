#!/usr/bin/env python3
"""Relays canaryd's promotion webhook to GitHub's repository_dispatch.

canaryd POSTs its own JSON body (event, canary, namespace, stageRevision, images, ...) with
Standard Webhooks headers and no other header. GitHub's POST /repos/OWNER/REPO/dispatches
needs `Authorization: Bearer <token>` and the body {"event_type", "client_payload"}; canaryd
can send neither, so this relay, run next to canaryd (a Service such as
http://github-relay.ci.svc, allowed by canaryd's default egress.hosts), verifies canaryd's
signature, keeps the GitHub token out of the Canary, and sends GitHub the body it wants.
Python standard library only. deploy/examples/README.md shows the Canary and the workflow.

Environment:
  GITHUB_REPOSITORY  OWNER/REPO whose workflow runs on `repository_dispatch`
  GITHUB_TOKEN       a fine-grained token with Contents: write on that repository only
  WEBHOOK_SECRET     the signing key of the Canary's promotion.webhook.secretRef
  EVENT_TYPE         the workflow's `types:` entry (default canaryd-promote)
  PORT               where to listen (default 8080)
"""

import base64
import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = os.environ["GITHUB_REPOSITORY"]
TOKEN = os.environ["GITHUB_TOKEN"]
SECRET = os.environ["WEBHOOK_SECRET"]
EVENT_TYPE = os.environ.get("EVENT_TYPE", "canaryd-promote")
API = os.environ.get("GITHUB_API", "https://api.github.com")
# webhook-id of every message already dispatched: canaryd calls again with the same id when it
# did not get a 2xx in time, and that must not start a second workflow run.
dispatched = set()


def verified(headers, body: bytes) -> bool:
    """Standard Webhooks: HMAC-SHA256 over "<id>.<timestamp>.<body>", 5 minutes of skew."""
    msg_id, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
    if not msg_id or not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return False
    key = base64.b64decode(SECRET[6:]) if SECRET.startswith("whsec_") else SECRET.encode()
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(
        hmac.compare_digest(s.partition(",")[2], expected)
        for s in headers.get("webhook-signature", "").split()
        if s.startswith("v1,")
    )


def dispatch(payload: dict) -> int:
    """POST /repos/OWNER/REPO/dispatches; GitHub's status code (204 when accepted)."""
    body = {
        "event_type": EVENT_TYPE,
        # At most 10 top-level properties: what the workflow needs, not the whole message.
        "client_payload": {
            "canary": payload["canary"],
            "namespace": payload["namespace"],
            "stageRevision": payload.get("stageRevision"),
            "images": payload.get("images", []),
        },
    }
    request = urllib.request.Request(
        f"{API}/repos/{REPO}/dispatches",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "Content-Type": "application/json",
            "User-Agent": "canaryd-dispatch-relay",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 599


class Relay(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(min(int(self.headers.get("content-length") or 0), 1 << 20))
        if not verified(self.headers, body):
            return self.answer(401)
        msg_id = self.headers["webhook-id"]
        payload = json.loads(body)
        if payload.get("event") != "promote" or msg_id in dispatched:
            return self.answer(204)
        status = dispatch(payload)
        if 200 <= status < 300:
            dispatched.add(msg_id)
            return self.answer(204)
        self.log_message("GitHub answered %d for %s", status, msg_id)
        return self.answer(502)  # canaryd calls again on a later round

    def answer(self, code: int):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


if __name__ == "__main__":
    ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Relay).serve_forever()
