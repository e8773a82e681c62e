"""schemathesis hooks that sign every request to a market node as market/src/auth.rs expects.

Load with SCHEMATHESIS_HOOKS=hooks and this directory on PYTHONPATH; scripts/api-check.sh does:
  PYTHONPATH=scripts/api SCHEMATHESIS_HOOKS=hooks MARKET_KEY=buyer.key schemathesis run ...

What it does, per request (before_call):
  * attaches a requests auth object that, on the final PreparedRequest (exact path+query as sent,
    exact body bytes), adds x-market-account / -timestamp / -nonce (fresh, 32 hex) / -signature;
    the digest is blake3(body), except POST /v1/blobs where it is the `expected` query value.
  * marks the case as explicitly authenticated, so schemathesis's ignored_auth check probes the
    route without the headers (its probes bypass before_call, so they go unsigned) once the
    document declares the headers as security schemes.
  * positive POST /v1/tasks cases get a real, freshly signed TaskSpec envelope (cheap inference or
    training task, unique nonce) as body, so the route is exercised past 400 and the stateful phase
    can follow the created task (read it, cancel it, fetch its result);
    positive POST /v1/blobs cases get ?expected=blake3(body) so the upload is accepted.
    Set MARKET_REAL_TASKS=0 to send schemathesis's own bodies instead.
Negative cases are left as generated (only signed), so negative_data_rejection still sees them.
"""
import os
import sys
import random
from urllib.parse import urlsplit, urlunsplit, parse_qsl, urlencode

import blake3
import requests
import schemathesis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import marketsign  # noqa: E402

KEY = marketsign.Key(os.environ["MARKET_KEY"])
REAL_TASKS = os.environ.get("MARKET_REAL_TASKS", "1") != "0"
_rng = random.Random(int(os.environ.get("MARKET_HOOK_SEED", "19")))


class MarketSignature(requests.auth.AuthBase):
    def __init__(self, fix_blob_expected=False):
        self.fix_blob_expected = fix_blob_expected

    def __call__(self, r: requests.PreparedRequest):
        body = r.body
        if body is None:
            body = b""
        elif isinstance(body, str):
            body = body.encode("utf-8")
            r.body = body
            r.headers["Content-Length"] = str(len(body))
        elif not isinstance(body, (bytes, bytearray)):
            body = b"".join(body)  # a generator / iterable body: materialise it so it is signed as sent
            r.body = body
            r.headers["Content-Length"] = str(len(body))
        if self.fix_blob_expected:
            parts = urlsplit(r.url)
            q = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "expected"]
            q.append(("expected", blake3.blake3(body).hexdigest()))
            r.url = urlunsplit(parts._replace(query=urlencode(q)))
        pq = r.path_url  # exactly what goes on the request line
        digest = marketsign.request_digest(r.method, pq, body)
        for k, v in KEY.sign_request(r.method, pq, body, digest_hex=digest).items():
            r.headers[k] = v
        return r


def _positive(case) -> bool:
    meta = getattr(case, "meta", None)
    if meta is None:
        return True
    return not meta.generation.mode.is_negative


def _negative_headers(case) -> bool:
    """schemathesis removed or broke a header on purpose (e.g. a security header, once the document
    declares the signature headers as apiKey schemes): leave the request unsigned so the node's 401
    is what the check sees."""
    meta = getattr(case, "meta", None)
    if meta is None:
        return False
    from schemathesis.core.parameters import ParameterLocation
    return meta.is_negative_at(ParameterLocation.HEADER)


@schemathesis.hook
def before_call(ctx, case, kwargs):
    if _negative_headers(case):
        return
    path = case.operation.path
    method = case.method.upper()
    fix_blob = False
    if _positive(case):
        if REAL_TASKS and method == "POST" and path == "/v1/tasks":
            kind = "inference" if _rng.random() < 0.5 else "training"
            envelope, _task_id = KEY.sign_message("market/v1/TaskSpec", marketsign.small_task(KEY.account, kind))
            case.body = envelope
        elif method == "POST" and path == "/v1/blobs":
            fix_blob = True
    kwargs["auth"] = MarketSignature(fix_blob_expected=fix_blob)
    object.__setattr__(case, "_has_explicit_auth", True)
