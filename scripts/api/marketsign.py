"""Signing for the market node's REST API (for the schemathesis hooks and the generated-client
test in this directory), written from market/src/auth.rs and spec/ENCODING.md.

Request signature (auth.rs):
  bytes = b"market/v1/HttpRequest" 0x00 METHOD "\n" PATH_AND_QUERY "\n" hex(blake3(body)) "\n" TIMESTAMP "\n" NONCE
  headers x-market-account, x-market-timestamp, x-market-nonce (16..64 of [A-Za-z0-9_-]), x-market-signature (hex)
  POST /v1/blobs is the exception: the digest is the `expected` blob id from the query, not blake3(body).
Signed messages (ENCODING.md section 5): UTF-8(domain) 00 JCS(body); envelope {body, signer, signature};
  message id = blake3(signing bytes) (a TaskId is the id of the buyer's TaskSpec).
"""
import json, secrets, time
from urllib.parse import urlsplit, parse_qs

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAX_SAFE = 2**53 - 1


def _jcs(v) -> bytes:
    """RFC 8785 for the values the protocol uses (safe integers, strings, booleans, null, arrays,
    objects), as spec/reference/check_vectors.py writes it."""
    out = []

    def walk(v):
        if v is None: out.append("null")
        elif v is True: out.append("true")
        elif v is False: out.append("false")
        elif isinstance(v, int):
            assert abs(v) <= MAX_SAFE; out.append(str(v))
        elif isinstance(v, str): out.append(json.dumps(v, ensure_ascii=False))
        elif isinstance(v, list):
            out.append("[")
            for i, x in enumerate(v):
                if i: out.append(",")
                walk(x)
            out.append("]")
        elif isinstance(v, dict):
            out.append("{")
            for i, k in enumerate(sorted(v, key=lambda k: k.encode("utf-16-be"))):
                if i: out.append(",")
                out.append(json.dumps(k, ensure_ascii=False)); out.append(":"); walk(v[k])
            out.append("}")
        else:
            raise TypeError(type(v))
    walk(v)
    return "".join(out).encode()


class Key:
    def __init__(self, path):
        d = json.load(open(path))
        assert d["kind"] == "market-ed25519-secret-v1"
        self.sk = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(d["secret"]))
        self.account = self.sk.public_key().public_bytes_raw().hex()
        assert self.account == d["account"], "key file account mismatch"

    def sign_request(self, method, path_and_query, body=b"", digest_hex=None, timestamp=None, nonce=None):
        if digest_hex is None:
            digest_hex = blake3.blake3(body or b"").hexdigest()
        ts = int(time.time()) if timestamp is None else timestamp
        nonce = nonce or secrets.token_hex(16)  # 32 chars of [0-9a-f]
        msg = b"market/v1/HttpRequest\x00" + f"{method.upper()}\n{path_and_query}\n{digest_hex}\n{ts}\n{nonce}".encode()
        return {
            "x-market-account": self.account,
            "x-market-timestamp": str(ts),
            "x-market-nonce": nonce,
            "x-market-signature": self.sk.sign(msg).hex(),
        }

    def sign_message(self, domain, body):
        signing = domain.encode() + b"\x00" + _jcs(body)
        return {"body": body, "signer": self.account, "signature": self.sk.sign(signing).hex()}, blake3.blake3(signing).hexdigest()


def request_digest(method, path_and_query, body):
    """The digest the node puts in the signing bytes for this request."""
    parts = urlsplit(path_and_query)
    if method.upper() == "POST" and parts.path == "/v1/blobs":
        exp = parse_qs(parts.query, keep_blank_values=True).get("expected", [""])[0]
        return exp  # the node parses it as a blob id first; a bad one never reaches the signature check
    return blake3.blake3(body or b"").hexdigest()


_counter = [int(time.time() * 1000)]


def small_task(buyer, kind="inference", price=60):
    """A cheap, real task: a unique nonce each time."""
    _counter[0] += 1
    base = {"version": 1, "buyer": buyer, "nonce": _counter[0], "seed": _counter[0] % 1000, "profile": "repro",
            "price": price, "audit": {"detection_target": "0.9", "assumed_faked_fraction": "0.25"}}
    if kind == "inference":
        base["workload"] = {
            "kind": "inference",
            "model": {"model": "gpt", "layers": 1, "heads": 1, "width": 16, "vocab": 16, "context": 16},
            "weights": None,
            "inputs": {"source": "prompts", "prompts": ["1+2=", "3+4="], "max_new_tokens": 2},
            "decoding": {"decoding": "greedy"},
        }
    else:
        base["workload"] = {
            "kind": "training",
            "model": {"model": "mlp", "widths": [4, 8, 2], "activation": "gelu"},
            "dataset": {"source": "teacher_mlp", "features": 4, "outputs": 2, "examples": 64},
            "optimizer": {"optimizer": "sgd", "lr": "0.05", "momentum": "0.9", "weight_decay": "0.0001"},
            "batch_size": 8, "steps": 20, "checkpoint_interval": 5, "initial_weights": None,
        }
    return base
