"""Sensitivity of compute-text.json: change one rule of section 3 (pieces, the token stream) or of
11.7 (the tokenizer) in text.py and report whether the vector's piece ends and tokens notice. A
rule the vector does not notice is one a port could break and still pass.
`python3 text_exp.py [name...]` (needs tokenizers==0.23.2, as text.py)."""
import json, os, sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import text  # noqa: E402

V = json.load(open(text.VECTOR, encoding="utf-8"))
TEXT = V["text"].encode("utf-8")
MERGES = V["tokenizer"]["tokenizer.ggml.merges"]


def keys(**over):
    k = dict(V["tokenizer"])
    k.update({"tokenizer.ggml." + a: b for a, b in over.items()})
    return k


def rebuilt(tok, edit):
    """tok with its tokenizer.json document changed by edit(doc)."""
    import tokenizers
    doc = json.loads(json.dumps(tok.doc))
    edit(doc)
    tok.tok, tok.doc = tokenizers.Tokenizer.from_str(json.dumps(doc)), doc
    return tok


def pieces_variant(floor=1024, size=4096, nl_window_inclusive=False, tail_strict=False, cut_forward=False,
                   nl_any=False):
    """text.pieces with one rule changed: the newline floor, the piece size, the newline window
    including s + size, the whole rest taken only when strictly shorter than size, a long line cut
    at the smallest boundary >= s + size instead of the largest <=, or any newline in the window
    (not only the first) allowed to end a piece (the last one)."""
    ends, s, n = [], 0, len(TEXT)
    while s < n:
        lo, hi = s + floor - 1, min(s + size + (1 if nl_window_inclusive else 0), n)
        nl = TEXT.rfind(b"\n", lo, hi) if nl_any else TEXT.find(b"\n", lo, hi)
        if nl >= 0:
            e = nl + 1
        elif (n - s < size) if tail_strict else (n - s <= size):
            e = n
        else:
            e = s + size
            while TEXT[e] & 0xC0 == 0x80:
                e += 1 if cut_forward else -1
        ends.append(e)
        s = e
    return ends


def stream(ends, tok, bos="once"):
    """The token stream over the given piece ends; bos: once, none or per_piece."""
    out = [tok.bos] if tok.add_bos and bos == "once" else []
    start = 0
    for end in ends:
        if tok.add_bos and bos == "per_piece":
            out.append(tok.bos)
        out += tok.encode_raw(TEXT[start:end].decode("utf-8"))
        start = end
    return ends, out


def drop_after_merge(tok):
    """Byte symbols outside the vocabulary kept through merging (as blockers), dropped after:
    every missing table character added as a token with a fresh id, those ids removed after."""
    n = tok.n
    missing = [c for c in sorted(set(text.BYTE_TABLE.values())) if c not in tok.doc["model"]["vocab"]]

    def edit(doc):
        for j, c in enumerate(missing):
            doc["model"]["vocab"][c] = n + j
    rebuilt(tok, edit)
    raw = tok.encode_raw
    tok.encode_raw = lambda s: [i for i in raw(s) if i < n]
    return tok


def digits_grouped(doc):
    doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{N}+"


def ignore_merges(doc):
    doc["model"]["ignore_merges"] = True


def no_added_tokens(doc):
    doc["added_tokens"] = []


def whole_text(tok):
    """The whole text in one encode call (no pieces); piece ends as the rule gives them."""
    return text.pieces(TEXT), ([tok.bos] if tok.add_bos else []) + tok.encode_raw(TEXT.decode("utf-8"))


T = lambda **k: text.Tokenizer(keys(**k))
EXPS = {
    "baseline": lambda: stream(text.pieces(TEXT), T()),
    # (a) the pre-tokenizer
    "pre_gpt2_no_digits": lambda: stream(text.pieces(TEXT), T(pre="gpt2")),
    "digits_not_individual": lambda: stream(text.pieces(TEXT), rebuilt(T(), digits_grouped)),
    # (b) the piece rule
    "newline_ends_every_piece": lambda: stream(pieces_variant(floor=1), T()),
    "floor_1023": lambda: stream(pieces_variant(floor=1023), T()),
    "floor_1025": lambda: stream(pieces_variant(floor=1025), T()),
    "last_newline_in_window": lambda: stream(pieces_variant(nl_any=True), T()),
    "piece_size_4095": lambda: stream(pieces_variant(size=4095), T()),
    "piece_size_4097": lambda: stream(pieces_variant(size=4097), T()),
    "newline_window_to_s_plus_4096": lambda: stream(pieces_variant(nl_window_inclusive=True), T()),
    "rest_taken_if_under_4096": lambda: stream(pieces_variant(tail_strict=True), T()),
    "cut_forward_to_boundary": lambda: stream(pieces_variant(cut_forward=True), T()),
    # (c) pieces at all
    "whole_text_one_call": lambda: whole_text(T()),
    # (d) the BOS
    "bos_per_piece": lambda: stream(text.pieces(TEXT), T(), bos="per_piece"),
    "bos_none": lambda: stream(text.pieces(TEXT), T(), bos="none"),
    # 11.7's tokenizer
    "merges_reversed": lambda: stream(text.pieces(TEXT), T(merges=MERGES[::-1])),
    "ignore_merges_true": lambda: stream(text.pieces(TEXT), rebuilt(T(), ignore_merges)),
    "no_added_tokens": lambda: stream(text.pieces(TEXT), rebuilt(T(), no_added_tokens)),
    "oov_bytes_dropped_after_merging": lambda: stream(text.pieces(TEXT), drop_after_merge(T())),
}


def boundaries(tok):
    """For each boundary between two pieces: do the two pieces encode differently apart than
    together (where piece-by-piece encoding can differ from the whole text)?"""
    ends, out, start = text.pieces(TEXT), [], 0
    for a, b in zip(ends, ends[1:]):
        apart = tok.encode_raw(TEXT[start:a].decode()) + tok.encode_raw(TEXT[a:b].decode())
        out.append((a, apart != tok.encode_raw(TEXT[start:b].decode())))
        start = a
    return out


def main(names):
    for name in names or EXPS:
        ends, toks = EXPS[name]()
        notes = []
        for field, got in (("piece_ends", ends), ("tokens", toks)):
            i = text.first_diff(got, V[field])
            notes.append("%s %s" % (field, "same" if i is None else "differ from index %d" % i))
        print("%-34s %s" % (name, ", ".join(notes)))
    if not names:
        for at, differ in boundaries(T()):
            print("boundary at byte %-5d (pieces apart vs together): tokens %s"
                  % (at, "differ" if differ else "same"))


if __name__ == "__main__":
    main(sys.argv[1:])
