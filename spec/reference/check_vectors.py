#!/usr/bin/env python3
"""An independent implementation of market's encoding, written from spec/ENCODING.md alone, that
checks every protocol vector in spec/vectors/. It shares no code with the Rust crates, so if both
pass, the spec is precise enough for a second implementation.

Needs: python3 >= 3.9, `pip install blake3 cryptography`.
Run:   python3 spec/reference/check_vectors.py
"""

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


def challenge_seed(commitment_id: bytes, beacon: bytes) -> bytes:
    return blake3.blake3(commitment_id + beacon, derive_key_context="market v1 challenge seed").digest()


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
        for other in ["market/v1/TaskSpec", "market/v1/Commitment", "market/v1/Challenge", "market/v1/Opening", "market/v1/Verdict", "market/v1/Receipt"]:
            if other == v["domain"]:
                continue
            try:
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(env["signer"])).verify(bytes.fromhex(env["signature"]), other.encode() + b"\x00" + jcs(env["body"]))
                raise AssertionError(f"{v['name']}: signature verified under {other}")
            except InvalidSignature:
                pass
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
        else:
            seed = challenge_seed(bytes.fromhex(v["commitment_id"]), bytes.fromhex(v["beacon"]))
            assert seed.hex() == v["seed"], v["name"]
            assert sample(seed, v["segments"], v["samples"]) == v["indices"], v["name"]
    return len(vectors)


def check_detection():
    vectors = load("detection.json")
    for v in vectors:
        n = v["n"]
        if v["kind"] == "probability":
            assert abs(float(detection(n, v["m"], v["s"])) - v["probability"]) < 1e-12, v["name"]
        else:
            m = ceil_fraction(v["faked_fraction"], n)
            assert m == v["m"], v["name"]
            target = Fraction(v["target"])
            s = next((s for s in range(n + 1) if detection(n, m, s) >= target), None)
            assert s == v["samples"], (v["name"], s, v["samples"])
    return len(vectors)


def main():
    total = 0
    for check in [check_keys, check_canonical, check_signatures, check_merkle, check_challenge, check_detection]:
        count = check()
        print(f"{check.__name__[6:]:<10} {count} vectors ok")
        total += count
    print(f"{total} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
