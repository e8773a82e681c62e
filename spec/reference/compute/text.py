"""A text dataset of spec/COMPUTE.md section 3 ("Text", `DatasetSource` "text"), written from the
spec alone (no Rust read): the text cut into pieces (3, step 2: a piece is at most 4096 bytes, and a
newline ends it only once it holds at least 1024), the byte-level BPE tokenizer that a GGUF file's
tokenizer keys give (11.7), built as a tokenizer.json document and loaded with the Python binding
of the pinned `tokenizers` 0.23.2, and the token stream (3, step 3: the BOS id once, then each
piece's `encode` without a BOS, added tokens matched within the piece).
Checks spec/vectors/compute-text.json: `python3 text.py [vector.json]` (needs
`pip install tokenizers==0.23.2`). Before the vector it checks 11.7's own statements against the
crate (check_spec_examples): the byte-to-character table as 11.7 writes it out, 11.7's example of
dropped byte symbols (`aéb` -> `ab`), and its merge-string rule (split at every space: exactly two
parts, each and their concatenation in the vocabulary), which this port applies itself rather
than leaving to the crate's parser.

Not checked here: the GGUF container itself (11.3; the vector holds the keys as JSON), the
refusals of 3 step 1 that need a model (more tokens than its vocabulary) and the 11.12 rules on
the resulting stream (tokens < V, at least Pmax + 1 of them). text_exp.py says which of these
rules the vector pins."""
import json, os, sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTOR = os.path.join(HERE, "..", "..", "vectors", "compute-text.json")

PIECE = 4096  # section 3 step 2: at most 4096 bytes a piece
PIECE_MIN = 1024  # section 3 step 2: a newline ends a piece only once it holds at least 1024 bytes
MAX_TEXT = 1 << 30  # section 3: "at most 2^30 bytes"
TOKENIZERS_VERSION = "0.23.2"  # 11.7: the crate pinned =0.23.2


# ---------- pieces (section 3, step 2) ----------
def pieces(text):
    """Byte offsets where each piece of `text` (UTF-8 bytes) ends. A piece starting at `s` ends
    (exclusive) at: `i + 1` for the smallest `i` with `s + 1023 <= i < min(s + 4096, len)` and
    `text[i] == 0x0A` (a newline ends a piece only once the piece holds at least 1024 bytes);
    otherwise `len` if `len - s <= 4096`; otherwise the largest `e <= s + 4096` that is a UTF-8
    character boundary (not a continuation byte 0x80-0xBF). From offset 0 until the end: an
    empty text has no piece; a text ending in 0x0A has no empty last piece."""
    if len(text) > MAX_TEXT:
        raise ValueError("invalid blob dataset: text over 2^30 bytes")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError("invalid blob dataset: not UTF-8 from byte %d" % e.start)
    ends, start, n = [], 0, len(text)
    while start < n:
        # the smallest i with s + 1023 <= i < min(s + 4096, len) and text[i] == 0x0A
        nl = text.find(b"\n", start + PIECE_MIN - 1, min(start + PIECE, n))
        if nl >= 0:
            end = nl + 1
        elif n - start <= PIECE:
            end = n
        else:
            end = start + PIECE  # < n, so text[end] exists; back off continuation bytes 10xxxxxx
            while text[end] & 0xC0 == 0x80:
                end -= 1
        ends.append(end)
        start = end
    return ends


# ---------- the tokenizer (11.7) ----------
def byte_table():
    """11.7's byte-to-character table, as written there: byte `b` maps to U+00`b` itself when `b` is
    in 0x21-0x7E, 0xA1-0xAC or 0xAE-0xFF; the other 68 bytes, in ascending order, map to U+0100,
    U+0101, ... U+0143."""
    kept = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, nxt = {}, 0x100
    for b in range(256):
        if b in kept:
            table[b] = chr(b)
        else:
            table[b], nxt = chr(nxt), nxt + 1
    assert nxt == 0x144 and table[0x20] == "\u0120" and table[0x0A] == "\u010a"
    return table


BYTE_TABLE = byte_table()


def check_byte_table():
    """The crate's ByteLevel maps bytes by 11.7's table: every byte that valid UTF-8 can hold (all
    but 0xC0, 0xC1, 0xF5-0xFF), each inside some character, in one call without the regex."""
    import tokenizers
    chars, seen = [], set()
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        new = set(chr(cp).encode("utf-8")) - seen
        if new:
            chars.append(chr(cp))
            seen |= new
        if len(seen) == 256 - 13:
            break
    s = "".join(chars)
    want = "".join(BYTE_TABLE[b] for b in s.encode("utf-8"))
    got = "".join(p for p, _ in tokenizers.pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=False).pre_tokenize_str(s))
    if got != want:
        raise RuntimeError("the crate's ByteLevel table differs from 11.7's")


def split_merge(m, vocab):
    """11.7: a merge string split at every space (U+0020) must give exactly two parts, each in the
    vocabulary, as is their concatenation. Returns (left, right) or raises (invalid blob
    tokenizer)."""
    parts = m.split(" ")
    if len(parts) != 2:
        raise ValueError("invalid blob tokenizer: merge %r does not split into two parts at its space" % m)
    for t in (parts[0], parts[1], parts[0] + parts[1]):
        if t not in vocab:
            raise ValueError("invalid blob tokenizer: merge %r: %r not in the vocabulary" % (m, t))
    return parts[0], parts[1]


class Tokenizer:
    """11.7's tokenizer from the GGUF tokenizer keys (a dict key -> value, as in the vector)."""

    def __init__(self, keys, own_merge_check=True):
        import tokenizers
        if tokenizers.__version__ != TOKENIZERS_VERSION:
            raise RuntimeError("needs tokenizers==%s, have %s" % (TOKENIZERS_VERSION, tokenizers.__version__))
        g = lambda k, d=None: keys.get("tokenizer.ggml." + k, d)
        tokens = list(g("tokens", []))  # 11.3: absent, no tokens
        # refusals (invalid blob `tokenizer`), in 11.7's order
        if g("model") != "gpt2":
            raise ValueError("invalid blob tokenizer: tokenizer.ggml.model %r is not gpt2" % g("model"))
        types = list(g("token_type", []))
        if len(types) > len(tokens):
            raise ValueError("invalid blob tokenizer: more token_type entries than tokens")
        vocab = {}
        for i, t in enumerate(tokens):
            if t in vocab:
                raise ValueError("invalid blob tokenizer: token %r appears twice" % t)
            vocab[t] = i
        pre = g("pre", "default")
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        if pre in ("smollm", "starcoder", "refact", "codeshell"):
            pretok = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": False},
                byte_level]}
        elif pre in ("gpt-2", "gpt2", "default"):
            pretok = byte_level
        else:
            raise ValueError("invalid blob tokenizer: unknown pre-tokenizer %r" % pre)
        merges = list(g("merges", []))  # none if absent
        for m in merges:  # 11.7's rule, checked here rather than left to the crate's parser
            if own_merge_check:
                split_merge(m, vocab)
        added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": ty == 3}
                 for i, ty in enumerate(types) if ty in (3, 4)]
        doc = {
            "version": "1.0",
            "truncation": None,  # no truncation
            "padding": None,  # no padding
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": pretok,
            "post_processor": None,
            # 11.7 says "decoder: ByteLevel" only; its options are the pre-tokenizer's (unused here)
            "decoder": dict(byte_level),
            "model": {
                "type": "BPE",
                "dropout": None,  # no dropout
                "unk_token": None,  # no unknown token
                "continuing_subword_prefix": None,  # no continuing-subword prefix
                "end_of_word_suffix": None,  # no end-of-word suffix
                "fuse_unk": False,
                "byte_fallback": False,  # no byte fallback
                "ignore_merges": False,
                "vocab": vocab,
                "merges": merges,  # "left right" strings, in priority order, as in the GGUF
            },
        }
        try:
            self.tok = tokenizers.Tokenizer.from_str(json.dumps(doc))
        except Exception as e:  # merges were checked above: the crate refusing now is a gap in 11.7
            raise RuntimeError("the crate refuses the document%s: %s"
                               % (" (11.7 accepts it)" if own_merge_check else "", e))
        self.n = len(tokens)
        self.tokens = tokens
        self.types = types + [1] * (len(tokens) - len(types))
        self.bos, self.eos = g("bos_token_id"), g("eos_token_id")
        for name, v in (("bos_token_id", self.bos), ("eos_token_id", self.eos)):
            if v is not None and not v < self.n:
                raise ValueError("invalid blob tokenizer: %s %d not below %d tokens" % (name, v, self.n))
        add_bos = g("add_bos_token", False)
        if not isinstance(add_bos, bool):
            raise ValueError("invalid blob GGUF model: tokenizer.ggml.add_bos_token not a BOOL")
        self.add_bos = add_bos and self.bos is not None
        self.doc = doc

    def encode_raw(self, s):
        """11.7's encode without the BOS: added tokens matched whole (leftmost-longest) in the raw
        text, the rest pre-tokenized and merged, each byte symbol not in the vocabulary dropped on
        its own before merging; add_special_tokens false."""
        return list(self.tok.encode(s, add_special_tokens=False).ids)

    def encode(self, s):
        """11.7's encode: the BOS id first iff add_bos_token is true and there is a BOS id."""
        return ([self.bos] if self.add_bos else []) + self.encode_raw(s)

    def encode_chat(self, s):
        """11.8: a rendered chat is encoded by 11.7 with its BOS rule, except that a text whose
        own tokens (without the BOS) already start with the BOS id gets no second BOS."""
        plain = self.encode_raw(s)
        if self.add_bos and not (plain and plain[0] == self.bos):
            return [self.bos] + plain
        return plain


def check_spec_examples():
    """11.7's own statements, checked against the crate before the vector: the byte table, the
    dropped-symbol example (`a`, `b`, the merge `a b`: `aéb` encodes as `ab`), and the merge
    strings 11.7 refuses (split at every space: not exactly two parts, or a part or the
    concatenation outside the vocabulary) and accepts."""
    check_byte_table()
    keys = lambda merges: {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab", "c"],
                           "tokenizer.ggml.merges": merges}
    if Tokenizer(keys(["a b"])).encode_raw("a\u00e9b") != [2]:
        raise RuntimeError("11.7's example: aéb does not encode as ab")
    for bad in (["ab"], ["a b c"], ["a  b"], ["a\tb"], ["a c"], ["x b"], [" a"]):
        # the port's rule (an invalid blob), then the crate alone on the same document
        for own, refusal in ((True, ValueError), (False, RuntimeError)):
            try:
                Tokenizer(keys(bad), own_merge_check=own)
            except refusal:
                continue
            who = "the port" if own else "the crate"
            raise RuntimeError("merge %r accepted by %s; 11.7 refuses it" % (bad[0], who))


# ---------- the token stream (section 3, step 3) ----------
def token_stream(text, tok):
    """(piece ends, tokens) of `text` (UTF-8 bytes) under `tok`: the BOS id once if the tokenizer
    asks for one, then each piece's encode without a BOS, in order."""
    ends = pieces(text)
    out = [tok.bos] if tok.add_bos else []
    start = 0
    for end in ends:
        out += tok.encode_raw(text[start:end].decode("utf-8"))
        start = end
    return ends, out


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else None


def fields(path=VECTOR):
    """[(field, ok, message)] for piece_ends and tokens of the vector at `path`."""
    check_spec_examples()
    v = json.load(open(path, encoding="utf-8"))
    ends, toks = token_stream(v["text"].encode("utf-8"), Tokenizer(v["tokenizer"]))
    res = []
    for field, got in (("piece_ends", ends), ("tokens", toks)):
        want = v[field]
        i = first_diff(got, want)
        if i is None:
            res.append((field, True, "%d values" % len(want)))
        else:
            g = got[i] if i < len(got) else "(end)"
            w = want[i] if i < len(want) else "(end)"
            res.append((field, False, "first differs at index %d: got %s, want %s (lengths %d and %d)"
                        % (i, g, w, len(got), len(want))))
    return res


def check(path=VECTOR, verbose=True):
    """True iff piece_ends and tokens equal the vector's; prints each mismatch (its first
    differing index)."""
    ok = True
    for field, good, msg in fields(path):
        ok = ok and good
        if verbose or not good:
            print("%s %s: %s %s" % (os.path.basename(path), field, "ok" if good else "MISMATCH", msg))
    return ok


if __name__ == "__main__":
    sys.exit(0 if check(sys.argv[1] if len(sys.argv) > 1 else VECTOR) else 1)
