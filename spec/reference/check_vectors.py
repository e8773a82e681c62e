#!/usr/bin/env python3
"""An independent implementation of market's encoding, written from spec/ENCODING.md alone, that
checks every protocol vector in spec/vectors/ and the RFC 9381 ECVRF examples, and re-derives
every beacon and every embedded verdict's challenge from a ledger export (spec/vectors/export.jsonl). It shares no code
with the Rust crates, so if both pass, the spec is precise enough for a second implementation.

Needs: python3 >= 3.9, `pip install blake3 cryptography`.
Run:   python3 spec/reference/check_vectors.py
"""

import hashlib
import json
import struct
import sys
from fractions import Fraction
from math import comb
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
MAX_SAFE = 2**53 - 1


# --- Canonical JSON (RFC 8785, integers only) ---------------------------------------------

class NotCanonical(Exception):
    pass


def jcs(value) -> bytes:
    out = []

    def string(s):
        parts = ['"']
        for ch in s:
            o = ord(ch)
            if ch == '"':
                parts.append('\\"')
            elif ch == "\\":
                parts.append("\\\\")
            elif ch == "\b":
                parts.append("\\b")
            elif ch == "\f":
                parts.append("\\f")
            elif ch == "\n":
                parts.append("\\n")
            elif ch == "\r":
                parts.append("\\r")
            elif ch == "\t":
                parts.append("\\t")
            elif o < 0x20:
                parts.append("\\u%04x" % o)
            else:
                parts.append(ch)
        parts.append('"')
        return "".join(parts)

    def walk(v, depth):
        if isinstance(v, (list, dict)) and depth >= 64:
            raise NotCanonical("too_deep")
        if v is None:
            out.append("null")
        elif v is True:
            out.append("true")
        elif v is False:
            out.append("false")
        elif isinstance(v, int):
            if abs(v) > MAX_SAFE:
                raise NotCanonical("number")
            out.append(str(v))
        elif isinstance(v, float):
            raise NotCanonical("number")
        elif isinstance(v, str):
            out.append(string(v))
        elif isinstance(v, list):
            out.append("[")
            for i, item in enumerate(v):
                if i:
                    out.append(",")
                walk(item, depth + 1)
            out.append("]")
        else:
            out.append("{")
            keys = sorted(v.keys(), key=lambda k: k.encode("utf-16-be"))
            for i, k in enumerate(keys):
                if i:
                    out.append(",")
                out.append(string(k))
                out.append(":")
                walk(v[k], depth + 1)
            out.append("}")

    walk(value, 0)
    return "".join(out).encode("utf-8")


def parse(text: str):
    """JSON with floats kept apart from integers and duplicate keys detected."""
    def pairs(items):
        d = {}
        for k, v in items:
            if k in d:
                raise NotCanonical("not_canonical")
            d[k] = v
        return d
    return json.loads(text, object_pairs_hook=pairs, parse_float=float, parse_int=int)


def strict_decode(text: str):
    try:
        value = parse(text)
    except NotCanonical:
        raise
    except (ValueError, RecursionError):
        raise NotCanonical("syntax")
    if jcs(value) != text.encode("utf-8"):
        raise NotCanonical("not_canonical")
    return value


# --- Merkle (RFC 6962 shape over blake3) ------------------------------------------------------

def leaf_hash(data: bytes) -> bytes:
    return blake3.blake3(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(b"\x01" + left + right).digest()


def mth(leaves):
    n = len(leaves)
    if n == 0:
        return blake3.blake3(b"").digest()
    if n == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def verify_proof(leaf: bytes, index: int, size: int, path, root: bytes) -> bool:
    if index >= size or size > 2**32 or len(path) > 64:
        return False
    fn, sn, r = index, size - 1, leaf_hash(leaf)
    for p in path:
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


# --- ChaCha20 stream and sampling -------------------------------------------------------------

def chacha_block(key: bytes, counter: int) -> bytes:
    def rotl(v, c):
        return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))

    def qr(s, a, b, c, d):
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 7)

    # DJB variant: 64-bit block counter in words 12-13, 64-bit nonce (zero) in words 14-15.
    state = list(struct.unpack("<4I", b"expand 32-byte k")) + list(struct.unpack("<8I", key)) + [
        counter & 0xFFFFFFFF, counter >> 32, 0, 0]
    w = state[:]
    for _ in range(10):
        qr(w, 0, 4, 8, 12); qr(w, 1, 5, 9, 13); qr(w, 2, 6, 10, 14); qr(w, 3, 7, 11, 15)
        qr(w, 0, 5, 10, 15); qr(w, 1, 6, 11, 12); qr(w, 2, 7, 8, 13); qr(w, 3, 4, 9, 14)
    return struct.pack("<16I", *[(a + b) & 0xFFFFFFFF for a, b in zip(w, state)])


class Stream:
    def __init__(self, key: bytes):
        self.key, self.counter, self.buf = key, 0, b""

    def next_u64(self) -> int:
        if len(self.buf) < 8:
            self.buf += chacha_block(self.key, self.counter)
            self.counter += 1
        v, self.buf = struct.unpack("<Q", self.buf[:8])[0], self.buf[8:]
        return v


def uniform_below(rng: Stream, bound: int) -> int:
    rejected = (2**64) % bound
    while True:
        x = rng.next_u64()
        if x < 2**64 - rejected:
            return x % bound


def sample(seed: bytes, n: int, s: int):
    rng, moved, out = Stream(seed), {}, []
    for i in range(s):
        j = i + uniform_below(rng, n - i)
        out.append(moved.get(j, j))
        moved[j] = moved.get(i, i)
    return out


def challenge_seed(commitment_id: bytes, beacon: bytes, verifier: bytes) -> bytes:
    return blake3.blake3(
        commitment_id + beacon + verifier, derive_key_context="market v1 challenge seed"
    ).digest()


def beacon_of(operator: bytes, commitment_id: bytes, proof: bytes):
    """The beacon: the first 32 bytes of the operator's ECVRF output over
    "market/v1/Beacon" 0x00 commitment_id, or None if the proof does not verify."""
    beta = vrf_verify(operator, b"market/v1/Beacon\x00" + commitment_id, proof)
    return None if beta is None else beta[:32]


# --- ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381), edwards25519 as in RFC 8032's Python ---------

ED_P = 2**255 - 19
ED_L = 2**252 + 27742317777372353535851937790883648493
ED_D = -121665 * pow(121666, ED_P - 2, ED_P) % ED_P
ED_SQRT_M1 = pow(2, (ED_P - 1) // 4, ED_P)
ED_IDENTITY = (0, 1, 1, 0)  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z
VRF_SUITE = b"\x03"


def ed_add(P, Q):
    p, d = ED_P, ED_D
    A = (P[1] - P[0]) * (Q[1] - Q[0]) % p
    B = (P[1] + P[0]) * (Q[1] + Q[0]) % p
    C = 2 * P[3] * Q[3] * d % p
    D = 2 * P[2] * Q[2] % p
    E, F, G, H = B - A, D - C, D + C, B + A
    return (E * F % p, G * H % p, F * G % p, E * H % p)


def ed_neg(P):
    return (-P[0] % ED_P, P[1], P[2], -P[3] % ED_P)


def ed_mul(s, P):
    Q = ED_IDENTITY
    while s > 0:
        if s & 1:
            Q = ed_add(Q, P)
        P = ed_add(P, P)
        s >>= 1
    return Q


def ed_equal(P, Q):
    return (P[0] * Q[2] - Q[0] * P[2]) % ED_P == 0 and (P[1] * Q[2] - Q[1] * P[2]) % ED_P == 0


def ed_recover_x(y, sign):
    p = ED_P
    if y >= p:
        return None
    x2 = (y * y - 1) * pow(ED_D * y * y + 1, p - 2, p) % p
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (p + 3) // 8, p)
    if (x * x - x2) % p != 0:
        x = x * ED_SQRT_M1 % p
    if (x * x - x2) % p != 0:
        return None
    if (x & 1) != sign:
        x = p - x
    return x


def ed_compress(P):
    zinv = pow(P[2], ED_P - 2, ED_P)
    x, y = P[0] * zinv % ED_P, P[1] * zinv % ED_P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def ed_decompress(b: bytes):
    """RFC 8032 5.1.3: None unless b is the canonical encoding of a curve point."""
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = ed_recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % ED_P)


ED_BY = 4 * pow(5, ED_P - 2, ED_P) % ED_P
ED_BX = ed_recover_x(ED_BY, 0)
ED_B = (ED_BX, ED_BY, 1, ED_BX * ED_BY % ED_P)


def vrf_encode_to_curve(pk: bytes, alpha: bytes):
    for ctr in range(256):
        h = hashlib.sha512(VRF_SUITE + b"\x01" + pk + alpha + bytes([ctr]) + b"\x00").digest()
        P = ed_decompress(h[:32])
        if P is not None:
            P = ed_mul(8, P)
            if not ed_equal(P, ED_IDENTITY):
                return P
    raise AssertionError("try-and-increment failed 256 times")


def vrf_challenge(*points) -> bytes:
    data = VRF_SUITE + b"\x02" + b"".join(ed_compress(P) for P in points) + b"\x00"
    return hashlib.sha512(data).digest()[:16]


def vrf_verify(pk: bytes, alpha: bytes, pi: bytes):
    """RFC 9381 5.3 with key validation: beta (64 bytes) if pi proves alpha under pk, else None."""
    Y = ed_decompress(pk)
    if Y is None or ed_equal(ed_mul(8, Y), ED_IDENTITY) or len(pi) != 80:
        return None
    Gamma = ed_decompress(pi[:32])
    c, s = int.from_bytes(pi[32:48], "little"), int.from_bytes(pi[48:], "little")
    if Gamma is None or s >= ED_L:
        return None
    H = vrf_encode_to_curve(pk, alpha)
    U = ed_add(ed_mul(s, ED_B), ed_neg(ed_mul(c, Y)))
    V = ed_add(ed_mul(s, H), ed_neg(ed_mul(c, Gamma)))
    if vrf_challenge(Y, H, Gamma, U, V) != pi[32:48]:
        return None
    return hashlib.sha512(VRF_SUITE + b"\x03" + ed_compress(ed_mul(8, Gamma)) + b"\x00").digest()


# --- Detection maths (exact, with fractions) ----------------------------------------------------

def detection(n, m, s):
    m, s = min(m, n), min(s, n)
    if m == 0 or s == 0:
        return Fraction(0)
    if s > n - m:
        return Fraction(1)
    return 1 - Fraction(comb(n - m, s), comb(n, s))


def ceil_fraction(decimal: str, n: int) -> int:
    f = Fraction(decimal) * n
    return min(n, -((-f.numerator) // f.denominator))


# --- Checks ------------------------------------------------------------------------------------

def load(name):
    doc = json.loads((VECTORS / name).read_text())
    assert isinstance(doc["description"], str)
    return doc["vectors"]


def check_keys():
    for v in load("keys.json"):
        sk = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["secret"]))
        pk = sk.public_key().public_bytes_raw()
        assert pk.hex() == v["account"], v["name"]
        msg = bytes.fromhex(v["message"])
        assert sk.sign(msg).hex() == v["signature"], v["name"]
        if "label" in v:
            secret = blake3.blake3(v["label"].encode(), derive_key_context="market v1 test identity").digest()
            assert secret.hex() == v["secret"], v["name"]
            # Peer id: base58btc of 00 24 08 01 12 20 || key.
            raw = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + pk
            assert base58(raw) == v["peer_id"], v["name"]
    return len(load("keys.json"))


def base58(b: bytes) -> str:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    n, out = int.from_bytes(b, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = alphabet[r] + out
    return "1" * (len(b) - len(b.lstrip(b"\0"))) + out


def check_canonical():
    vectors = load("canonical.json")
    for v in vectors:
        if "canonical" in v and v["canonical"] is not None:
            assert jcs(parse(v["input"])).decode() == v["canonical"], v["name"]
            strict_decode(v["canonical"])
        else:
            try:
                strict_decode(v["input"])
            except NotCanonical as e:
                assert str(e) == v["error"], (v["name"], str(e), v["error"])
            else:
                raise AssertionError(f"{v['name']} should be refused")
    return len(vectors)


def check_signatures():
    vectors = load("signatures.json")
    for v in vectors:
        env = v["envelope"]
        signing = v["domain"].encode() + b"\x00" + jcs(env["body"])
        assert signing.hex() == v["signing_bytes"], v["name"]
        assert blake3.blake3(signing).hexdigest() == v["id"], v["name"]
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(env["signer"])).verify(bytes.fromhex(env["signature"]), signing)
        for other in ["market/v1/TaskSpec", "market/v1/Commitment", "market/v1/Challenge", "market/v1/Opening", "market/v1/Verdict", "market/v1/Receipt", "market/v1/Answer", "market/v1/AnswerCheck", "market/v1/KeyRotation", "market/v1/RotationAcceptance"]:
            if other == v["domain"]:
                continue
            try:
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(env["signer"])).verify(bytes.fromhex(env["signature"]), other.encode() + b"\x00" + jcs(env["body"]))
                raise AssertionError(f"{v['name']}: signature verified under {other}")
            except InvalidSignature:
                pass
    # A rotation's acceptance names the rotation by its message id and is signed by its new
    # key (ledger/README.md, `rotate`).
    by_name = {v["name"]: v for v in vectors}
    rotation, acceptance = by_name["key-rotation"], by_name["rotation-acceptance"]
    assert acceptance["envelope"]["body"]["rotation"] == rotation["id"]
    assert acceptance["envelope"]["signer"] == rotation["envelope"]["body"]["to"]
    assert rotation["envelope"]["signer"] == rotation["envelope"]["body"]["from"]
    return len(vectors)


def check_merkle():
    vectors = load("merkle.json")
    for v in vectors:
        leaves = [bytes.fromhex(x) for x in v["leaves"]]
        root = bytes.fromhex(v["root"])
        assert mth(leaves) == root, v["name"]
        for i, p in enumerate(v["proofs"]):
            path = [bytes.fromhex(h) for h in p["path"]]
            assert verify_proof(leaves[i], p["leaf_index"], p["tree_size"], path, root), v["name"]
            assert not verify_proof(leaves[i] + b"x", p["leaf_index"], p["tree_size"], path, root)
    return len(vectors)


def check_challenge():
    vectors = load("challenge.json")
    for v in vectors:
        if v["kind"] == "stream":
            rng = Stream(bytes.fromhex(v["seed"]))
            assert ["%016x" % rng.next_u64() for _ in v["u64"]] == v["u64"], v["name"]
        elif v["kind"] == "beacon":
            cid, op = bytes.fromhex(v["commitment_id"]), bytes.fromhex(v["operator"])
            proof = bytes.fromhex(v["beacon_proof"])
            got = beacon_of(op, cid, proof)
            assert got is not None and got.hex() == v["beacon"], v["name"]
            # Another commitment id, or a proof by another key, gives no beacon.
            assert beacon_of(op, bytes(32), proof) is None, v["name"]
        elif v["kind"] == "batch_beacon":
            root, op = bytes.fromhex(v["root"]), bytes.fromhex(v["operator"])
            proof = bytes.fromhex(v["beacon_proof"])
            beta = vrf_verify(op, b"market/v1/ServeBatch\x00" + root, proof)
            assert beta is not None and beta[:32].hex() == v["beacon"], v["name"]
            # The same 32 bytes as a commitment id give no beacon: the domains differ.
            assert beacon_of(op, root, proof) is None, v["name"]
            assert sample(beta[:32], v["answers"], v["audited"]) == v["indices"], v["name"]
        elif v["kind"] == "verifier_draw":
            pool = []
            for p in v["pool"]:
                stake, rep = p["stake"], p["reputation"]
                w = stake * (10 + min(rep, 100)) // 10 if rep >= 0 else stake >> min(-rep, 32)
                assert max(w, 1) == p["weight"], v["name"]
                pool.append((bytes.fromhex(p["account"]), max(w, 1)))
            pool.sort()
            key = b"verifiers" + bytes.fromhex(v["beacon"])
            if v["round"] > 0:
                key += struct.pack("<I", v["round"])
            rng, order = Stream(blake3.blake3(key).digest()), []
            while pool:
                x = uniform_below(rng, sum(w for _, w in pool))
                for i, (_, w) in enumerate(pool):
                    if x < w:
                        break
                    x -= w
                order.append(pool.pop(i)[0].hex())
            assert order == v["order"], v["name"]
        elif v["kind"] == "ringer_draw":
            rng = Stream(blake3.blake3(b"ringers" + bytes.fromhex(v["beacon"])).digest())
            got = [uniform_below(rng, 1_000_000) < v["rate_ppm"] for _ in v["planted"]]
            assert got == v["planted"], v["name"]
        else:
            seed = challenge_seed(
                bytes.fromhex(v["commitment_id"]),
                bytes.fromhex(v["beacon"]),
                bytes.fromhex(v["verifier"]),
            )
            assert seed.hex() == v["seed"], v["name"]
            assert sample(seed, v["segments"], v["samples"]) == v["indices"], v["name"]
    return len(vectors)


def samples_per_verifier(n: int, m: int, target: float, verifiers: int):
    """ENCODING.md section 9, in binary64 exactly as specified: the smallest s >= 1 such that
    1 - miss(s)^verifiers >= target, miss(s) walked down one factor at a time."""
    m = min(m, n)
    if m == 0 or verifiers == 0:
        return None
    miss = 1.0
    for s in range(n):
        if s >= 1:
            union_miss = 1.0
            for _ in range(verifiers):
                union_miss *= miss
            if 1.0 - union_miss >= target:
                return s
        miss *= float(max(n - m - s, 0)) / float(n - s)
    return n


def pooled_miss(n: int, s: int, k: int, stop_at: float) -> float:
    """ENCODING.md section 9: ((n - s) / n)^k by repeated multiplication in binary64, stopping
    once the product is 0 or 1 - product >= stop_at."""
    q = float(n - s) / float(n)
    miss = 1.0
    for _ in range(k):
        if miss == 0.0 or 1.0 - miss >= stop_at:
            break
        miss *= q
    return miss


def pooled_samples_per_verifier(n: int, m: int, target: float, verifiers: int):
    """ENCODING.md section 9: the smallest s >= 1 with 1 - ((n - s)/n)^(verifiers * m) >= target."""
    if m == 0 or verifiers == 0 or n == 0:
        return None
    for s in range(1, n):
        if 1.0 - pooled_miss(n, s, verifiers * m, target) >= target:
            return s
    return n


def message_id(domain: str, body) -> bytes:
    return blake3.blake3(domain.encode() + b"\x00" + jcs(body)).digest()


def challenge_id(verifier: bytes, cid: bytes, beacon: bytes, segments: int, samples: int) -> bytes:
    """The message id of a verifier's Challenge (ENCODING.md sections 6 and 8)."""
    seed = challenge_seed(cid, beacon, verifier)
    body = {
        "beacon": beacon.hex(),
        "commitment_id": cid.hex(),
        "sampled": sample(seed, segments, samples),
        "seed": seed.hex(),
        "segments": segments,
        "verifier": verifier.hex(),
        "version": 1,
    }
    return message_id("market/v1/Challenge", body)


def operation_key(text: str) -> str:
    """The ledger key of a node operation's text: its kind, ':', then 48 hex digits of blake3."""
    return text.split(":")[0] + ":" + blake3.blake3(text.encode()).hexdigest()[:48]


OPERATION_TEXTS = {
    "escrow": lambda o: f"escrow:{o['task']}",
    "commit": lambda o: f"commit:{o['task']}:{o['attempt']}:{o['worker']}",
    "reward": lambda o: f"reward:{o['task']}:{o['attempt']}:{o['verifier']}",
    "release": lambda o: f"release:{o['task']}:{o['attempt']}",
    "slash": lambda o: f"slash:{o['task']}:{o['attempt']}:{o['account']}:{o['payee']}:{o['tag']}",
    "refund": lambda o: f"refund:{o['task']}",
    "pool_round": lambda o: f"pool_round:{o['task']}:{o['round']}",
    "mint": lambda o: f"mint:{o['label']}:{o['account']}",
    "stake": lambda o: f"stake:{o['label']}:{o['account']}",
    "stake_hello": lambda o: f"stake:hello:{o['account']}:{o['current']}:{o['target']}",
    "reputation": lambda o: f"rep:{o['event']}:{o['account']}",
    "serve_escrow": lambda o: f"serve_escrow:{o['answer']}",
    "serve_unused": lambda o: f"serve_unused:{o['answer']}",
    "serve_release": lambda o: f"serve_release:{o['answer']}",
    "serve_refund": lambda o: f"serve_refund:{o['answer']}",
    "serve_slash": lambda o: f"serve_slash:{o['batch']}:{o['payee']}",
    "serve_check_fee": lambda o: f"serve_check_fee:{o['answer']}",
    "serve_verifier_slash": lambda o: f"serve_verifier_slash:{o['check']}",
    "rotate": lambda o: f"rotate:{o['from']}",
}


def check_operation_keys():
    vectors = load("operation-keys.json")
    for v in vectors:
        if v["kind"] == "operation":
            o = v["operation"]
            text = OPERATION_TEXTS[o["kind"]](o)
            assert text == o["text"], o["kind"]
            assert operation_key(text) == o["key"], o["kind"]
        elif v["kind"] == "serve_failure_evidence":
            text = f"serve_failed:{v['batch']}:{v['answer']}"
            assert blake3.blake3(text.encode()).hexdigest() == v["evidence"], v
        elif v["kind"] == "abandon_evidence":
            text = f"abandoned:{v['task']}:{v['attempt']}:{v['worker']}"
            assert blake3.blake3(text.encode()).hexdigest() == v["evidence"], v
        else:
            assert v["kind"] == "slot_round_task_id"
            data = bytes.fromhex(v["parent"]) + struct.pack("<II", v["round"], v["slot"])
            got = blake3.blake3(data, derive_key_context="market v1 pool slot-round task")
            assert got.hexdigest() == v["id"], v
    return len(vectors)


def check_export():
    """Re-derives, from a ledger export alone (a devnet run's, spec/vectors/export.jsonl), every
    beacon and the challenge of every verdict the ledger embeds: a rewarded verdict must answer
    the challenge sized for the V verifiers paid on its commitment and list exactly its sample;
    a failing verdict embedded in a slash must answer its verifier's challenge for some V and
    name a segment of it. Also checks the chain, signatures and that the rewarded samples meet
    the buyer's detection target together."""
    lines = (VECTORS / "export.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    entries = [parse(line.decode()) for line in lines[:-1]]
    ledger = bytes.fromhex(entries[0]["body"]["kind"]["genesis"]["ledger"])
    prev = bytes(32)
    tasks, commitments, verdicts, released, rewarded, rounds = {}, {}, [], {}, {}, []
    spent = {}
    for raw, e in zip(lines, entries):
        assert jcs(e) == raw, "not canonical"
        body = e["body"]
        assert bytes.fromhex(body["prev"]) == prev and bytes.fromhex(body["signer"]) == ledger
        signing = b"market/v1/LedgerEntry\x00" + jcs(body)
        Ed25519PublicKey.from_public_bytes(ledger).verify(bytes.fromhex(e["signature"]), signing)
        prev = blake3.blake3(signing).digest()
        (kind, k), = body["kind"].items()
        # Keys whose whole text the entry holds are recomputed (spec/PROTOCOL.md). A served
        # answer's escrow embeds no spec; its escrow, release and refund are serve_* operations
        # (PROTOCOL.md section 3, "Served inference").
        served = kind == "escrow" and k.get("spec") is None or tasks.get(k.get("task_id"), {}).get("served")
        if kind in ("escrow", "refund") or (kind in ("release", "reward") and served):
            # A served request's refund is its unused hold, or its batch's failure; a reward
            # from it is the fee of the verifier that checked the answer.
            prefixes = {"refund": ["serve_unused", "serve_refund"], "reward": ["serve_check_fee"]}.get(kind, [f"serve_{kind}"]) if served else [kind]
            assert body["key"] in [operation_key(f"{p}:{k['task_id']}") for p in prefixes], body["key"]
        elif kind == "pool_round":
            text = f"pool_round:{k['task_id']}:{k['round']}"
            assert body["key"] == operation_key(text), body["key"]
        if kind == "escrow" and served:
            tasks[k["task_id"]] = {"price": k["amount"], "served": True, "workload": {}}
        elif kind == "escrow":
            tasks[k["task_id"]] = k["spec"]["body"]
        elif kind == "commit":
            c = k["commitment"]
            cid = message_id("market/v1/Commitment", c["body"])
            beacon = beacon_of(ledger, cid, bytes.fromhex(k["beacon_proof"]))
            assert beacon is not None, "a beacon proof does not verify"
            commitments[cid] = (c["body"], beacon)
        elif kind in ("reward", "slash") and k.get("verdict"):
            verdicts.append((kind, k["verdict"]["body"]))
        if kind in ("release", "reward", "refund"):
            # Replay every escrow: nothing leaves it that was not put in.
            spent[k["task_id"]] = spent.get(k["task_id"], 0) + k["amount"]
            assert spent[k["task_id"]] <= tasks[k["task_id"]]["price"], "an escrow overdrawn"
        if kind == "release" and tasks[k["task_id"]]["workload"].get("pool"):
            assert k.get("commitment"), "a pooled task's release without its commitment"
        if kind == "release" and k.get("commitment"):
            cid = message_id("market/v1/Commitment", k["commitment"]["body"])
            assert cid not in released, "a commitment released twice"
            released[cid] = (k["task_id"], k["amount"])
        elif kind == "reward" and k.get("verdict"):
            cid = bytes.fromhex(k["verdict"]["body"]["commitment_id"])
            rewarded[cid] = rewarded.get(cid, 0) + k["amount"]
        elif kind == "pool_round":
            rounds.append(k)
    checked = 0
    for cid, (c, beacon) in commitments.items():
        task = tasks[c["task_id"]]
        policy, n = task["audit"], c["segments"]
        pool = task["workload"].get("pool")
        runs = pool["workers"] * pool["rounds"] if pool else 1
        m = ceil_fraction(policy["assumed_faked_fraction"], n * runs)
        target = float(Fraction(policy["detection_target"]))

        def plan(V):
            # A pooled task's slot-rounds are sized together (ENCODING.md section 9).
            if pool:
                return min(pooled_samples_per_verifier(n, m, target, V), n)
            return min(samples_per_verifier(n, m, target, V), n)

        mine = [(kind, v) for kind, v in verdicts if bytes.fromhex(v["commitment_id"]) == cid]
        paid = [v for kind, v in mine if kind == "reward"]
        for kind, v in mine:
            verifier = bytes.fromhex(v["verifier"])
            sizes = [len(paid)] if kind == "reward" else range(1, 9)
            found = None
            for V in sizes:
                s = plan(V)
                if challenge_id(verifier, cid, beacon, n, s).hex() == v["challenge_id"]:
                    found = s
                    break
            assert found is not None, f"a {kind} verdict does not answer its challenge"
            got = [x["segment"] for x in v["checked"]]
            sampled = sample(challenge_seed(cid, beacon, verifier), n, found)
            if v["outcome"]["result"] == "pass":
                assert got == sampled, "a pass does not list its sample"
            else:
                seg = v["outcome"]["segment"]
                assert seg in sampled or (seg == 0 and not got), "a failure outside its sample"
            checked += 1
        if paid and pool:
            s = plan(len(paid))
            bound = 1.0 - pooled_miss(n, s, len(paid) * m, 2.0)
            assert bound >= target, "below the buyer's target"
        elif paid:
            s = plan(len(paid))
            union = 1 - (1 - detection(n, m, s)) ** len(paid)
            assert union >= Fraction(policy["detection_target"]), "below the buyer's target"
    # Pooled tasks (COMPUTE.md section 10, ledger/README.md `pool_round`): each task's rounds in
    # order from 0, each naming, in slot order, one recorded and paid commitment per slot to
    # that slot-round of that task.
    # Payments (PROTOCOL.md section 8): a task releases once, a pooled task once per
    # slot-round, each slot-round within its budget floor(price / (workers * rounds)).
    per_task = {}
    for cid, (task_id, amount) in released.items():
        per_task[task_id] = per_task.get(task_id, 0) + 1
        pool = tasks[task_id]["workload"].get("pool")
        if pool:
            budget = tasks[task_id]["price"] // (pool["workers"] * pool["rounds"])
            assert amount + rewarded.get(cid, 0) <= budget, "a slot-round paid over its budget"
    for task_id, n in per_task.items():
        pool = tasks[task_id]["workload"].get("pool")
        assert n <= (pool["workers"] * pool["rounds"] if pool else 1), "too many releases"
    next_round = {}
    for k in rounds:
        task = tasks[k["task_id"]]
        pool = task["workload"]["pool"]
        assert k["round"] == next_round.get(k["task_id"], 0), "a pool round out of order"
        assert k["round"] < pool["rounds"], "a pool round past the last"
        next_round[k["task_id"]] = k["round"] + 1
        assert len(k["slots"]) == pool["workers"], "a pool round without every slot"
        workers = {commitments[bytes.fromhex(c)][0]["worker"] for c in k["slots"]}
        assert len(workers) == len(k["slots"]), "a round's slots not on distinct workers"
        for slot, cid_hex in enumerate(k["slots"]):
            cid = bytes.fromhex(cid_hex)
            c, _ = commitments[cid]
            sr = c["slot_round"]
            assert c["task_id"] == k["task_id"] and (sr["slot"], sr["round"]) == (slot, k["round"])
            assert c["steps"] == pool["inner_steps"], "a slot-round of another length"
            assert cid in released, "a merged slot-round that was not accepted and paid"
    assert commitments and checked
    return len(commitments) + checked + len(rounds)


def check_detection():
    vectors = load("detection.json")
    for v in vectors:
        n = v["n"]
        if v["kind"] == "probability":
            assert abs(float(detection(n, v["m"], v["s"])) - v["probability"]) < 1e-12, v["name"]
        elif v["kind"] == "pooled":
            runs = v["slot_rounds"]
            m = ceil_fraction(v["faked_fraction"], n * runs)
            assert m == v["m"], v["name"]
            target = float(Fraction(v["target"]))
            s = pooled_samples_per_verifier(n, m, target, v["verifiers"])
            assert s == v["samples"], (v["name"], s, v["samples"])
            p = 1.0 - pooled_miss(n, s, v["verifiers"] * m, 2.0)
            assert p == v["probability"], (v["name"], p, v["probability"])
            # The bound is below the exact detection of the cheater's best split (one faked
            # segment per run while there are runs), so the target holds for every split.
            per_run = [m // runs + (1 if i < m % runs else 0) for i in range(runs)]
            exact_miss = 1
            for mi in per_run:
                exact_miss *= (1 - detection(n, mi, s)) ** v["verifiers"]
            assert 1 - exact_miss >= Fraction(v["target"]), v["name"]
        elif v["kind"] == "per_verifier":
            m = ceil_fraction(v["faked_fraction"], n)
            assert m == v["m"], v["name"]
            s = samples_per_verifier(n, m, float(Fraction(v["target"])), v["verifiers"])
            assert s == v["samples"], (v["name"], s, v["samples"])
            # The exact union probability agrees with the binary64 walk of the spec.
            exact = 1 - (1 - detection(n, m, s)) ** v["verifiers"]
            assert abs(float(exact) - v["probability"]) < 1e-12, v["name"]
        else:
            m = ceil_fraction(v["faked_fraction"], n)
            assert m == v["m"], v["name"]
            target = Fraction(v["target"])
            s = next((s for s in range(n + 1) if detection(n, m, s) >= target), None)
            assert s == v["samples"], (v["name"], s, v["samples"])
    return len(vectors)


# RFC 9381 appendix B.3: (SK, PK, alpha, pi, beta).
VRF_VECTORS = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "8657106690b5526245a92b003bb079ccd1a92130477671f6fc01ad16f26f723f26f8a57ccaed74ee1b190bed1f479d9727d2d0f9b005a6e456a35d4fb0daab1268a1b0db10836d9826a528ca76567805",
     "90cf1df3b703cce59e2a35b925d411164068269d7b2d29f3301c03dd757876ff66b71dda49d2de59d03450451af026798e8f81cd2e333de5cdf4f3e140fdd8ae"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "f3141cd382dc42909d19ec5110469e4feae18300e94f304590abdced48aed5933bf0864a62558b3ed7f2fea45c92a465301b3bbf5e3e54ddf2d935be3b67926da3ef39226bbc355bdc9850112c8f4b02",
     "eb4440665d3891d668e7e0fcaf587f1b4bd7fbfe99d0eb2211ccec90496310eb5e33821bc613efb94db5e5b54c70a848a0bef4553a41befc57663b56373a5031"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "9bc0f79119cc5604bf02d23b4caede71393cedfbb191434dd016d30177ccbf8096bb474e53895c362d8628ee9f9ea3c0e52c7a5c691b6c18c9979866568add7a2d41b00b05081ed0f58ee5e31b3a970e",
     "645427e5d00c62a23fb703732fa5d892940935942101e456ecca7bb217c61c452118fec1219202a0edcf038bb6373241578be7217ba85a2687f7a0310b2df19f"),
]


def check_vrf():
    for i, (sk, pk, alpha, pi, beta) in enumerate(VRF_VECTORS):
        pk, alpha, pi = bytes.fromhex(pk), bytes.fromhex(alpha), bytes.fromhex(pi)
        name = f"RFC 9381 B.3 example {16 + i}"
        assert Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sk)).public_key().public_bytes_raw() == pk, name
        assert ed_compress(ed_decompress(pk)) == pk, name
        assert vrf_verify(pk, alpha, pi).hex() == beta, name
        # A flipped bit in Gamma, c or s, another input, another key, and s + L are refused.
        for byte in [0, 32, 47, 48]:
            assert vrf_verify(pk, alpha, pi[:byte] + bytes([pi[byte] ^ 1]) + pi[byte + 1:]) is None, name
        assert vrf_verify(pk, alpha + b"\x00", pi) is None, name
        assert vrf_verify(bytes.fromhex(VRF_VECTORS[(i + 1) % 3][1]), alpha, pi) is None, name
        s_plus_l = (int.from_bytes(pi[48:], "little") + ED_L).to_bytes(32, "little")
        assert vrf_verify(pk, alpha, pi[:48] + s_plus_l) is None, name
    return len(VRF_VECTORS)


# --- Chunk hashes of manifest entries (NETWORK.md section 10) ------------------------------
# A BLAKE3 of its own (compression function, chunk and parent nodes, from the BLAKE3 paper),
# vectorized over chunks with numpy; the library `blake3` only checks the final roots.

B3_IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
B3_PERMUTATION = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
B3_CHUNK_START, B3_CHUNK_END, B3_PARENT, B3_ROOT = 1, 2, 4, 8
TRANSFER_CHUNK = 1 << 20


def b3_compress(cv, block, counter, block_len, flags):
    """One compression for n lanes at once: cv is 8 arrays, block 16 arrays (uint32, length n);
    counter, block_len and flags are arrays or scalars. Returns the 8 words of the chaining value."""
    import numpy as np

    def rotr(x, r):
        return (x >> np.uint32(r)) | (x << np.uint32(32 - r))

    n = len(cv[0])
    u = lambda x: np.broadcast_to(np.asarray(x, dtype=np.uint64), (n,))
    counter = u(counter)
    s = [c.copy() for c in cv] + [np.full(n, B3_IV[i], dtype=np.uint32) for i in range(4)] + [
        (counter & 0xFFFFFFFF).astype(np.uint32), (counter >> 32).astype(np.uint32),
        u(block_len).astype(np.uint32), u(flags).astype(np.uint32)]
    m = list(block)

    def g(a, b, c, d, x, y):
        s[a] = s[a] + s[b] + x
        s[d] = rotr(s[d] ^ s[a], 16)
        s[c] = s[c] + s[d]
        s[b] = rotr(s[b] ^ s[c], 12)
        s[a] = s[a] + s[b] + y
        s[d] = rotr(s[d] ^ s[a], 8)
        s[c] = s[c] + s[d]
        s[b] = rotr(s[b] ^ s[c], 7)

    with np.errstate(over="ignore"):
        for r in range(7):
            g(0, 4, 8, 12, m[0], m[1]); g(1, 5, 9, 13, m[2], m[3])
            g(2, 6, 10, 14, m[4], m[5]); g(3, 7, 11, 15, m[6], m[7])
            g(0, 5, 10, 15, m[8], m[9]); g(1, 6, 11, 12, m[10], m[11])
            g(2, 7, 8, 13, m[12], m[13]); g(3, 4, 9, 14, m[14], m[15])
            m = [m[B3_PERMUTATION[i]] for i in range(16)]
    return [s[i] ^ s[i + 8] for i in range(8)]


def b3_words(cvs):
    """An (n, 8) uint32 array as 8 lane arrays."""
    return [cvs[:, i].copy() for i in range(8)]


def b3_chunk_cvs(data: bytes, first_counter: int):
    """The chaining values (non-root) of the 1 KiB BLAKE3 chunks of `data`, numbered from
    `first_counter`, as an (n, 8) uint32 array."""
    import numpy as np
    full = len(data) // 1024
    out = []
    if full:
        words = np.frombuffer(data[:full * 1024], dtype="<u4").reshape(full, 16, 16)
        cv = [np.full(full, B3_IV[i], dtype=np.uint32) for i in range(8)]
        counters = np.arange(first_counter, first_counter + full, dtype=np.uint64)
        for b in range(16):
            flags = (B3_CHUNK_START if b == 0 else 0) | (B3_CHUNK_END if b == 15 else 0)
            cv = b3_compress(cv, [words[:, b, w].copy() for w in range(16)], counters, 64, flags)
        out.append(np.stack(cv, axis=1))
    rest = data[full * 1024:]
    if rest or not full:
        blocks = [rest[i:i + 64] for i in range(0, len(rest), 64)] or [b""]
        cv = [np.full(1, B3_IV[i], dtype=np.uint32) for i in range(8)]
        for b, block in enumerate(blocks):
            flags = (B3_CHUNK_START if b == 0 else 0) | (B3_CHUNK_END if b == len(blocks) - 1 else 0)
            words = np.frombuffer(block.ljust(64, b"\0"), dtype="<u4")
            cv = b3_compress(cv, [words[w:w + 1].copy() for w in range(16)], first_counter + full, len(block), flags)
        out.append(np.stack(cv, axis=1))
    return np.concatenate(out)


def b3_parent(left, right, root: bool):
    """Parent nodes of n pairs of (n, 8) chaining values: chaining values, or root hashes."""
    import numpy as np
    n = len(left)
    cv = [np.full(n, B3_IV[i], dtype=np.uint32) for i in range(8)]
    block = b3_words(left) + b3_words(right)
    return np.stack(b3_compress(cv, block, 0, 64, B3_PARENT | (B3_ROOT if root else 0)), axis=1)


def b3_subtree(cvs):
    """The chaining value of a subtree from its chunks' chaining values (left-complete: pairs
    merged level by level, a trailing odd node carried up)."""
    import numpy as np
    while len(cvs) > 1:
        even = len(cvs) // 2 * 2
        merged = b3_parent(cvs[0:even:2], cvs[1:even:2], False)
        cvs = np.concatenate([merged, cvs[even:]]) if even < len(cvs) else merged
    return cvs[0]


def cv_bytes(cv) -> bytes:
    import numpy as np
    return np.asarray(cv, dtype="<u4").tobytes()


def transfer_chunk_hash(size: int, i: int, data: bytes) -> bytes:
    if size <= TRANSFER_CHUNK:
        return blake3.blake3(data).digest()
    return cv_bytes(b3_subtree(b3_chunk_cvs(data, i * 1024)))


def entry_root(size: int, chunks) -> bytes:
    """The spec's node(o, len, r) recursion over the chunk hashes."""
    import numpy as np
    if not chunks:
        return blake3.blake3(b"").digest()
    if len(chunks) == 1:
        return chunks[0]

    def node(o, length, root):
        if length <= TRANSFER_CHUNK:
            return chunks[o // TRANSFER_CHUNK]
        full = (length - 1) // 1024
        left = (1 << (full.bit_length() - 1)) * 1024
        assert left % TRANSFER_CHUNK == 0
        as_cv = lambda b: np.frombuffer(b, dtype="<u4").reshape(1, 8)
        out = b3_parent(as_cv(node(o, left, False)), as_cv(node(o + left, length - left, False)), root)
        return cv_bytes(out[0])

    return node(0, size, True)


def check_chunks():
    vectors = load("chunks.json")
    for v in vectors:
        size = v["size"]
        import numpy as np
        data = (np.arange(size, dtype=np.uint64) % 251).astype(np.uint8).tobytes()
        chunks = [transfer_chunk_hash(size, i, data[o:o + TRANSFER_CHUNK])
                  for i, o in enumerate(range(0, size, TRANSFER_CHUNK))]
        assert [c.hex() for c in chunks] == v["chunks"], f"chunk hashes of {size} bytes"
        root = entry_root(size, chunks)
        assert root.hex() == v["root"], f"root of {size} bytes"
        assert root == blake3.blake3(data).digest(), f"the root of {size} bytes is not its blake3"
    # A chunk hash is bound to its position: the same bytes as another chunk hash otherwise.
    same = bytes(7 for _ in range(2 * TRANSFER_CHUNK))
    assert transfer_chunk_hash(len(same), 0, same[:TRANSFER_CHUNK]) != transfer_chunk_hash(len(same), 1, same[TRANSFER_CHUNK:])
    return len(vectors)


def main():
    total = 0
    for check in [check_keys, check_canonical, check_signatures, check_merkle, check_challenge, check_detection, check_vrf, check_operation_keys, check_export, check_chunks]:
        count = check()
        print(f"{check.__name__[6:]:<10} {count} vectors ok")
        total += count
    print(f"{total} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
