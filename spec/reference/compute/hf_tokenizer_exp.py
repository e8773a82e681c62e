"""Self-test of hf_tokenizer.py (spec/COMPUTE.md 11.7a): mutates the `tokenizer_json` of
spec/vectors/compute-text.json in the ways 11.7a refuses and checks each is refused (the reason
printed), each by the refusal 11.7a's numbered order reports first (cases with two failures check that
order), then in ways 11.7a accepts and checks each gives the vector's `tokens` (without its
first, the BOS, where the file gives none). For every case
it also says what the `tokenizers` library (0.23.2) itself does with the same file
(`Tokenizer.from_str`: loads or refuses; for a file it loads, its ids by section 3 with
`add_special_tokens` false and 11.7a's BOS once). Then the bounds of 2 (keys in an object,
values in all, levels of nesting), 3 (`added_tokens`) and 8 (`model.merges`): each just over,
refused at its step, and at it, accepted (files of up to 4,194,305 values, so this part takes
about a minute), with cases where a bound and another refusal meet; and section 3 step 1's
order for a text dataset's tokenizer.json (11.7a, then more tokens than the model's vocabulary,
then 11.7). `python3 hf_tokenizer_exp.py`; exit 1 if a case does not go as 11.7a says."""
import copy, json, os, sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hf_tokenizer as hf  # noqa: E402
import text  # noqa: E402

V = json.load(open(text.VECTOR, encoding="utf-8"))
TJ = V["tokenizer_json"]
TEXT = V["text"].encode("utf-8")
BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
SPLIT = {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": False}


def edit(f):
    """The file's bytes after f(doc) on a copy of the vector's object."""
    d = copy.deepcopy(TJ)
    f(d)
    return json.dumps(d, ensure_ascii=False).encode("utf-8")


def raw(f):
    """The file's bytes after f(json text): for what a JSON object cannot hold (a key twice)."""
    return f(json.dumps(TJ, ensure_ascii=False)).encode("utf-8")


def setk(path, value):
    def f(d):
        *head, last = path
        for k in head:
            d = d[k]
        d[last] = value
    return f


def delk(path):
    def f(d):
        *head, last = path
        for k in head:
            d = d[k]
        del d[last]
    return f


def seq(*fs):
    def f(d):
        for g in fs:
            g(d)
    return f


def tokens_of(tok):
    return text.token_stream(TEXT, tok)[1]


def crate(blob, bos):
    """What the library does with the file: 'refuses (...)', or 'loads, same tokens' / 'loads,
    tokens differ at i' (section 3's stream, add_special_tokens false, the BOS given once)."""
    import tokenizers
    try:
        t = tokenizers.Tokenizer.from_str(blob.decode("utf-8"))
    except BaseException as e:  # a panic in the binding is a BaseException
        return "refuses (%s%s)" % ("panic: " if type(e).__name__ == "PanicException" else "",
                                   str(e).split(" at line")[0][:70])
    out, start = ([bos] if bos is not None else []), 0
    try:
        for end in text.pieces(TEXT):
            out += t.encode(TEXT[start:end].decode("utf-8"), add_special_tokens=False).ids
            start = end
    except BaseException as e:  # a panic in the binding
        return "loads, encode fails (%s)" % type(e).__name__
    i = text.first_diff(out, V["tokens"])
    return "loads, same tokens" if i is None else "loads, tokens differ at %d" % i


def sub(old, new):
    """A raw edit replacing the first `old` (which must be there) by `new`."""
    def f(s):
        assert old in s, old
        return s.replace(old, new, 1)
    return f


def added_token(i, c):
    """An added token (special false) in the shape the library saves it."""
    return {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": False}


def added(*toks):
    """Appends added tokens (id, content) whose contents are not in the text."""
    return lambda d: d["added_tokens"].extend(added_token(i, c) for i, c in toks)


def fill_gap(d):
    """Removes `S` (id 50) from the vocabulary and adds it back as an added token."""
    del d["model"]["vocab"]["S"]
    d["added_tokens"].append(added_token(50, "S"))


TP_BOS = ["post_processor", "special_tokens", "<|im_start|>", "ids"]

# (case, file, the number of 11.7a's refusal that must be the first to fail)
REFUSED = [
    ("file over 64 MiB", raw(lambda s: s + " " * (hf.MAX_BYTES + 1 - len(s.encode("utf-8")))), 1),
    ("key twice in vocab, same id (raw text)", raw(sub('"!": 0,', '"!": 0, "!": 0,')), 2),
    ("key twice in vocab, new id (raw text)", raw(sub('"!": 0,', '"!": 0, "!": 110,')), 2),
    ("key twice in the ByteLevel pre-tokenizer", raw(sub('"use_regex": true}]', '"use_regex": true, "use_regex": true}]')), 2),
    ("key twice in post_processor.pair (not read)", raw(sub('"type_id": 1}', '"type_id": 1, "type_id": 1}')), 2),
    ("unpaired surrogate escape in version (not read)", raw(sub('"1.0"', '"\\ud800"')), 2),
    ("NaN in version (not read)", raw(sub('"1.0"', 'NaN')), 2),
    ("byte-order mark", raw(lambda s: "\ufeff" + s), 2),
    ("not JSON (trailing comma)", raw(lambda s: s[:-1] + ",}"), 2),
    ("unknown top-level key", edit(setk(["extra"], 1)), 3),
    ("model absent", edit(delk(["model"])), 3),
    ("added token special \"yes\"", edit(setk(["added_tokens", 0, "special"], "yes")), 3),
    ("added token normalized null", edit(setk(["added_tokens", 0, "normalized"], None)), 3),
    ("added token id 96.0", edit(setk(["added_tokens", 0, "id"], 96.0)), 3),
    ("added token unknown key", edit(setk(["added_tokens", 0, "extra"], 1)), 3),
    ("added token id -1 (not an integer)", edit(setk(["added_tokens", 0, "id"], -1)), 3),
    ("added token id 2^64 (not an integer)", edit(setk(["added_tokens", 0, "id"], 2 ** 64)), 3),
    ("normalizer set", edit(setk(["normalizer"], {"type": "NFC"})), 4),
    ("truncation set", edit(setk(["truncation"], {"max_length": 8})), 4),
    ("ByteLevel add_prefix_space true", edit(setk(["pre_tokenizer", "pretokenizers", 1, "add_prefix_space"], True)), 5),
    ("ByteLevel add_prefix_space absent", edit(delk(["pre_tokenizer", "pretokenizers", 1, "add_prefix_space"])), 5),
    ("ByteLevel add_prefix_space null", edit(setk(["pre_tokenizer", "pretokenizers", 1, "add_prefix_space"], None)), 5),
    ("ByteLevel alone, add_prefix_space absent", edit(setk(["pre_tokenizer"], {"type": "ByteLevel"})), 5),
    ("Digits individual_digits false", edit(setk(["pre_tokenizer", "pretokenizers", 0, "individual_digits"], False)), 5),
    ("Digits individual_digits absent", edit(delk(["pre_tokenizer", "pretokenizers", 0, "individual_digits"])), 5),
    ("Split invert true", edit(setk(["pre_tokenizer", "pretokenizers", 0], dict(SPLIT, invert=True))), 5),
    ("Split invert \"no\"", edit(setk(["pre_tokenizer", "pretokenizers", 0], dict(SPLIT, invert="no"))), 5),
    ("Split pattern with another key", edit(setk(["pre_tokenizer", "pretokenizers", 0],
                                                 dict(SPLIT, pattern={"Regex": "\\p{N}", "String": "x"}))), 5),
    ("pre_tokenizer absent", edit(delk(["pre_tokenizer"])), 5),
    ("pre_tokenizer Sequence [ByteLevel, Digits]",
     edit(lambda d: d["pre_tokenizer"]["pretokenizers"].reverse()), 5),
    ("TemplateProcessing single [$A, special]",
     edit(lambda d: d["post_processor"].__setitem__("single", d["post_processor"]["single"][::-1])), 6),
    ("TemplateProcessing special ids [96, 97]", edit(setk(TP_BOS, [96, 97])), 6),
    ("TemplateProcessing BOS id -1 (not an integer: 0 .. 2^64-1)", edit(setk(TP_BOS, [-1])), 6),
    ("TemplateProcessing BOS id 2^64", edit(setk(TP_BOS, [2 ** 64])), 6),
    ("post_processor Sequence of two TemplateProcessing",
     edit(lambda d: d.__setitem__("post_processor", {"type": "Sequence", "processors": [d["post_processor"]] * 2})), 6),
    ("post_processor Sequence nested in a Sequence",
     edit(lambda d: d.__setitem__("post_processor", {"type": "Sequence", "processors": [
         {"type": "Sequence", "processors": [d["post_processor"]]}]})), 6),
    ("post_processor Sequence holding null",
     edit(lambda d: d.__setitem__("post_processor", {"type": "Sequence", "processors": [None]})), 6),
    ("decoder Metaspace", edit(setk(["decoder"], {"type": "Metaspace"})), 7),
    ("merge of three strings", edit(lambda d: d["model"]["merges"].append(["a", "n", "d"])), 8),
    ("model unknown key", edit(setk(["model", "extra"], 1)), 8),
    ("vocab id 5.0", edit(setk(["model", "vocab", "&"], 5.0)), 8),
    ("vocab id 2^64 (not an integer)", edit(setk(["model", "vocab", "&"], 2 ** 64)), 8),
    ("vocab id 10^5000 (not an integer)", raw(sub('"&": 5,', '"&": 1' + "0" * 5000 + ',')), 8),
    ("vocab id 2^64-1 (an integer; ids then miss 5)", edit(setk(["model", "vocab", "&"], 2 ** 64 - 1)), 10),
    ("model.type absent", edit(delk(["model", "type"])), 9),
    ("model.dropout 0.1", edit(setk(["model", "dropout"], 0.1)), 9),
    ("model.unk_token set", edit(setk(["model", "unk_token"], "!")), 9),
    ("model.continuing_subword_prefix ##", edit(setk(["model", "continuing_subword_prefix"], "##")), 9),
    ("model.byte_fallback true", edit(setk(["model", "byte_fallback"], True)), 9),
    ("model.ignore_merges true", edit(setk(["model", "ignore_merges"], True)), 9),
    ("id twice in vocab", edit(setk(["model", "vocab", "!"], 1)), 10),
    ("gap in vocab ids (id 50 removed)", edit(delk(["model", "vocab", "S"])), 10),
    ("vocab gap (id 50) filled by an added token", edit(fill_gap), 10),
    ("added token lstrip true", edit(setk(["added_tokens", 0, "lstrip"], True)), 11),
    ("added token content differs from vocab", edit(setk(["added_tokens", 0, "content"], "<|bos|>")), 11),
    ("added token id twice", edit(lambda d: d["added_tokens"].append(dict(d["added_tokens"][0]))), 11),
    ("added tokens outside vocab, descending (111, 110)", edit(added((111, "<x1>"), (110, "<x0>"))), 11),
    ("added tokens outside vocab, same id twice (110, 110)", edit(added((110, "<x0>"), (110, "<x1>"))), 11),
    ("added token outside vocab with a gap (111)", edit(added((111, "<x1>"))), 12),
    ("TemplateProcessing BOS id 110 (not below n)", edit(setk(TP_BOS, [110])), 13),
    ("merge pair with a space in a side", edit(lambda d: d["model"]["merges"].append(["\u0120a n", "d"])), 14),
    # two failures: the first in 11.7a's order is the one reported
    ("order: key twice (2) and unknown top-level key (3)",
     raw(lambda s: sub('"!": 0,', '"!": 0, "!": 0,')(s)[:-1] + ', "extra": 1}'), 2),
    ("order: normalizer (4) and pre_tokenizer absent (5)",
     edit(seq(setk(["normalizer"], {"type": "NFC"}), delk(["pre_tokenizer"]))), 4),
    ("order: decoder Metaspace (7) and post_processor nested (6)",
     edit(seq(setk(["decoder"], {"type": "Metaspace"}),
              setk(["post_processor"], {"type": "Sequence", "processors": [{"type": "Sequence", "processors": []}]}))), 6),
    ("order: model.unk_token (9) and decoder Metaspace (7)",
     edit(seq(setk(["model", "unk_token"], "!"), setk(["decoder"], {"type": "Metaspace"}))), 7),
    ("order: added token lstrip (11) and vocab gap (10)",
     edit(seq(setk(["added_tokens", 0, "lstrip"], True), delk(["model", "vocab", "S"]))), 10),
    ("order: merge with a space (14) and BOS 110 (13)",
     edit(seq(lambda d: d["model"]["merges"].append(["\u0120a n", "d"]), setk(TP_BOS, [110]))), 13),
    ("order: merge of three (8) and model.type absent (9)",
     edit(seq(lambda d: d["model"]["merges"].append(["a", "n", "d"]), delk(["model", "type"]))), 8),
]

ALL_BL_EXTRA = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True, "trim_offsets": "x", "extra": [1]}
TP_SINGLE_A = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}]}

# (case, file, expect): expect True, the vector's tokens; False, them without the first (no BOS);
# a function, true of the keys 11.7a gives (for a file whose tokens differ from the vector's)
ACCEPTED = [
    ("the vector's file (Digits, pair merges, TemplateProcessing)", edit(lambda d: None), True),
    ("Split on \\p{N} instead of Digits", edit(setk(["pre_tokenizer", "pretokenizers", 0], SPLIT)), True),
    ("Split on \\p{N}, invert absent", edit(setk(["pre_tokenizer", "pretokenizers", 0],
                                                 {k: v for k, v in SPLIT.items() if k != "invert"})), True),
    ("Split on \\p{N}, invert null", edit(setk(["pre_tokenizer", "pretokenizers", 0], dict(SPLIT, invert=None))), True),
    ("merges as strings", edit(lambda d: d["model"].__setitem__("merges", [" ".join(p) for p in d["model"]["merges"]])), True),
    ("merges mixed strings and pairs", edit(setk(["model", "merges", 0], "t h")), True),
    ("post_processor Sequence[ByteLevel, TemplateProcessing]",
     edit(lambda d: d.__setitem__("post_processor", {"type": "Sequence", "processors": [BL, d["post_processor"]]})), True),
    ("ByteLevel use_regex/trim_offsets absent", edit(seq(delk(["pre_tokenizer", "pretokenizers", 1, "use_regex"]),
                                                       delk(["pre_tokenizer", "pretokenizers", 1, "trim_offsets"]))), True),
    ("extra keys in ByteLevel (trim_offsets \"x\", extra)", edit(setk(["pre_tokenizer", "pretokenizers", 1], ALL_BL_EXTRA)), True),
    ("extra keys in Digits, Sequence, decoder", edit(seq(setk(["pre_tokenizer", "pretokenizers", 0, "extra"], 1),
                                                       setk(["pre_tokenizer", "extra"], 1),
                                                       setk(["decoder"], ALL_BL_EXTRA))), True),
    ("extra keys in TemplateProcessing, pair absent",
     edit(seq(setk(["post_processor", "extra"], {"x": 1}), delk(["post_processor", "pair"]),
              setk(["post_processor", "special_tokens", "<|im_start|>", "tokens"], 7),
              setk(["post_processor", "special_tokens", "other"], "not read"))), True),
    ("added tokens' flags absent", edit(lambda d: [[a.pop(k) for k in ("single_word", "lstrip", "rstrip", "normalized")]
                                                   for a in d["added_tokens"]]), True),
    ("added tokens outside vocab, ascending (110, 111)", edit(added((110, "<x0>"), (111, "<x1>"))), True),
    ("added token in vocab (97) after one outside it (110)",
     edit(lambda d: d["added_tokens"].insert(1, added_token(110, "<x0>"))), True),
    ("a 5000-digit number in version (not read)", raw(sub('"1.0"', "9" * 5000)), True),
    ("decoder, version, truncation, padding, normalizer absent",
     edit(seq(*[delk([k]) for k in ("decoder", "version", "truncation", "padding", "normalizer")])), True),
    ("model optional keys absent", edit(seq(*[delk(["model", k]) for k in (
        "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", "byte_fallback",
        "ignore_merges")])), True),
    ("pre_tokenizer ByteLevel alone (gpt2: digits not isolated)",
     edit(setk(["pre_tokenizer"], {"type": "ByteLevel", "add_prefix_space": False})),
     lambda keys: keys["tokenizer.ggml.pre"] == "gpt2" and keys["tokenizer.ggml.bos_token_id"] == 96),
    ("post_processor null", edit(setk(["post_processor"], None)), False),
    ("post_processor ByteLevel with other keys", edit(setk(["post_processor"], ALL_BL_EXTRA)), False),
    ("post_processor Sequence empty", edit(setk(["post_processor"], {"type": "Sequence", "processors": []})), False),
    ("post_processor TemplateProcessing [$A]", edit(setk(["post_processor"], TP_SINGLE_A)), False),
]


# ---------- the bounds of 2, 3 and 8 (each just over: refused at its step; at it: not by it) ----------
def count_values(x):
    """11.7a 2's count, on a built document: each object, list, key, string, number, boolean and
    null one."""
    if isinstance(x, dict):
        return 1 + sum(1 + count_values(v) for v in x.values())
    if isinstance(x, list):
        return 1 + sum(count_values(v) for v in x)
    return 1


BASE = count_values(TJ)


def vocab_of(n):
    """model.vocab extended to n keys, ids running 0 .. n-1."""
    def f(d):
        v = d["model"]["vocab"]
        v.update(("<v%d>" % i, i) for i in range(len(v), n))
    return f


def added_of(n, full=True):
    """added_tokens extended to n objects outside the vocabulary, from the next id up (ascending, no
    gap): in the shape the library saves (15 values each), or only `{"id", "content"}` (5)."""
    def f(d):
        a, first = d["added_tokens"], len(d["model"]["vocab"])
        a.extend(added_token(first + j, "<a%d>" % j) if full else {"id": first + j, "content": "<a%d>" % j}
                 for j in range(n - len(a)))
    return f


def merges_of(n, pairs=True):
    """model.merges extended to n items, each `t h` (as the pair [t, h], 3 values, or as a string,
    1; the library takes one form or the other, not both)."""
    def f(d):
        m = d["model"]["merges"]
        m.extend([["t", "h"] if pairs else "t h" for _ in range(n - len(m))])
    return f


def values_in_all(total):
    """The vector's file grown to `total` values in all, in shapes 11.7a and the library both
    read: added tokens (15 values each), then vocabulary keys (2) and merge pairs (3) for the
    rest."""
    vocab, merges = len(TJ["model"]["vocab"]), len(TJ["model"]["merges"])
    rest = total - BASE
    more_added = min(MA - len(TJ["added_tokens"]), (rest - 10) // 15)
    rest -= 15 * more_added
    more_vocab = next(j for j in range(3) if (rest - 2 * j) % 3 == 0)
    more_merges = (rest - 2 * more_vocab) // 3
    assert more_vocab + vocab <= MK and merges + more_merges <= MM
    grow = seq(vocab_of(vocab + more_vocab), added_of(len(TJ["added_tokens"]) + more_added),
               merges_of(merges + more_merges))

    def f(d):
        grow(d)
        assert count_values(d) == total
    return f


def nested(levels):
    """`version` a list nested so that the file holds `levels` levels of objects and lists (its own
    object the first)."""
    return raw(sub('"1.0"', "[" * (levels - 1) + "]" * (levels - 1)))


def tail(blob, more):
    """The file's bytes with `more` (text) written before its final `}`."""
    assert blob.endswith(b"}")
    return blob[:-1] + more.encode("utf-8") + b"}"


MV, MK, MA, MM = hf.MAX_VALUES, hf.MAX_KEYS, hf.MAX_ADDED, hf.MAX_MERGES
METASPACE = setk(["decoder"], {"type": "Metaspace"})

# (case, a function giving the file, the refusal that must be first, or None: 11.7a accepts it)
BOUNDS = [
    ("2: model.vocab 262,144 keys", lambda: edit(vocab_of(MK)), None),
    ("2: model.vocab 262,145 keys", lambda: edit(vocab_of(MK + 1)), 2),
    ("2: version (not read) an object of 262,144 keys",
     lambda: edit(setk(["version"], dict.fromkeys(map(str, range(MK)), 0))), None),
    ("2: version (not read) an object of 262,145 keys",
     lambda: edit(setk(["version"], dict.fromkeys(map(str, range(MK + 1)), 0))), 2),
    ("2: 4,194,304 values in all", lambda: edit(values_in_all(MV)), None),
    ("2: 4,194,305 values in all", lambda: edit(values_in_all(MV + 1)), 2),
    ("2: over 4,194,304 values, 3's and 8's bounds at their limits",
     lambda: edit(seq(vocab_of(MK), added_of(MA, full=False), merges_of(MM))), 2),
    ("2: 127 levels of objects and lists", lambda: nested(127), None),
    ("2: 128 levels of objects and lists", lambda: nested(128), 2),
    ("3: added_tokens 262,144 objects", lambda: edit(added_of(MA)), None),
    ("3: added_tokens 262,145 objects", lambda: edit(added_of(MA + 1)), 3),
    ("order: added_tokens 262,145 (3), a key twice at the end (2)",
     lambda: tail(edit(added_of(MA + 1)), ', "version": "1.0"'), 2),
    ("order: added_tokens 262,145 (3), normalizer set (4)",
     lambda: edit(seq(added_of(MA + 1), setk(["normalizer"], {"type": "NFC"}))), 3),
    ("order: added_tokens 262,145 (3), merges 1,048,577 (8)",
     lambda: edit(seq(added_of(MA + 1, full=False), merges_of(MM + 1, pairs=False))), 3),
    ("8: model.merges 1,048,576 pairs", lambda: edit(merges_of(MM)), None),
    ("8: model.merges 1,048,576 strings", lambda: edit(merges_of(MM, pairs=False)), None),
    ("8: model.merges 1,048,577 pairs", lambda: edit(merges_of(MM + 1)), 8),
    ("8: model.merges 1,048,577 strings", lambda: edit(merges_of(MM + 1, pairs=False)), 8),
    ("order: merges 1,048,577 (8), unknown top-level key (3)",
     lambda: edit(seq(merges_of(MM + 1), setk(["extra"], 1))), 3),
    ("order: merges 1,048,577 (8), decoder Metaspace (7)",
     lambda: edit(seq(merges_of(MM + 1), METASPACE)), 7),
    ("order: merges 1,048,577 (8), model.type absent (9)",
     lambda: edit(seq(merges_of(MM + 1), delk(["model", "type"]))), 8),
    ("order: merges 1,048,577 (8), vocab gap (10)",
     lambda: edit(seq(merges_of(MM + 1), delk(["model", "vocab", "S"]))), 8),
]


def bounds():
    ok = True
    print("\nbounds of 11.7a 2, 3, 8 (the vector's file holds %d values)   | the library's from_str" % BASE)
    for name, make, step in BOUNDS:
        blob = make()
        try:
            hf.keys_from_tokenizer_json(blob)
            res, good = "accepted" if step is None else "ACCEPTED (11.7a refuses it at %d)" % step, step is None
        except hf.Refused as e:
            res = "refused [%d]: %s" % (e.step, str(e)[len("invalid blob tokenizer: "):])
            good = e.step == step
            if not good:
                res += "  (WANT %s)" % ("accepted" if step is None else "refusal %d first" % step)
        ok = ok and good
        print("%-4s %-42s %s\n     %-42s %d bytes; library: %s" % ("ok" if good else "FAIL", name, res, "",
                                                                   len(blob), crate(blob, 96)))
        del blob
    return ok


# ---------- section 3 step 1: 11.7a, then the size against the model's vocabulary, then 11.7 ----------
DUP_STRING = added((110, "!"))  # an added token outside the vocabulary whose string `!` is id 0's: 11.7 refuses
DATASET = [  # (case, file, the model's vocab_size, what must happen)
    ("110 tokens, vocabulary 110", edit(lambda d: None), 110, "built"),
    ("110 tokens, vocabulary 109", edit(lambda d: None), 109, "dataset.tokenizer"),
    ("111 tokens, one string twice (11.7), vocabulary 110", edit(DUP_STRING), 110, "dataset.tokenizer"),
    ("111 tokens, one string twice (11.7), vocabulary 111", edit(DUP_STRING), 111, "11.7"),
    ("110 tokens, normalizer set (11.7a 4), vocabulary 109", edit(setk(["normalizer"], {"type": "NFC"})), 109, "11.7a"),
]


def dataset():
    ok = True
    print("\nsection 3 step 1, a text dataset's tokenizer.json: 11.7a, then more tokens than the vocabulary, then 11.7")
    for name, blob, v, want in DATASET:
        try:
            hf.dataset_tokenizer(blob, v)
            got, msg = "built", ""
        except hf.Refused as e:
            got, msg = "11.7a", str(e)
        except hf.TooManyTokens as e:
            got, msg = "dataset.tokenizer", str(e)
        except ValueError as e:
            got, msg = "11.7", str(e)
        good = got == want
        ok = ok and good
        print("%-4s %-52s %s%s%s" % ("ok" if good else "FAIL", name, got, ": " + msg if msg else "",
                                     "" if good else "  (WANT %s)" % want))
    return ok


def main():
    ok = True
    print("refused by 11.7a (hf_tokenizer.py), [the refusal's number]  | the library's from_str")
    for name, blob, step in REFUSED:
        try:
            hf.keys_from_tokenizer_json(blob)
            res, good = "ACCEPTED (11.7a refuses it at %d)" % step, False
        except hf.Refused as e:
            res = "refused [%d]: %s" % (e.step, str(e)[len("invalid blob tokenizer: "):])
            good = e.step == step
            if not good:
                res += "  (WANT refusal %d first)" % step
        except ValueError as e:  # 11.7's refusals (text.Tokenizer) are not 11.7a's
            res, good = "refused by 11.7, not 11.7a %d: %s" % (step, e), False
        ok = ok and good
        lib = crate(blob, 96) if len(blob) <= hf.MAX_BYTES else "(not tried)"
        print("%-4s %-42s %s\n     %-42s library: %s" % ("ok" if good else "FAIL", name, res, "", lib))
    print("\naccepted by 11.7a: the vector's tokens (with its BOS, or without it where 11.7a gives none)")
    for name, blob, expect in ACCEPTED:
        bos = 96
        try:
            keys = hf.keys_from_tokenizer_json(blob)
            tok = text.Tokenizer(keys)
            if callable(expect):
                res, good = ("accepted, keys as expected", True) if expect(keys) else ("KEYS NOT AS EXPECTED", False)
            else:
                want = V["tokens"] if expect else V["tokens"][1:]
                bos = 96 if expect else None
                i = text.first_diff(tokens_of(tok), want)
                res = "same tokens" + ("" if expect else " (no BOS)")
                res, good = (res, True) if i is None else ("tokens differ at %d" % i, False)
        except ValueError as e:
            res, good = "REFUSED: " + str(e), False
        ok = ok and good
        print("%-4s %-42s %s\n     %-42s library: %s" % ("ok" if good else "FAIL", name, res, "", crate(blob, bos)))
    # the library on the vector's own file, as the library would run it: per piece with
    # add_special_tokens true (its TemplateProcessing then puts the BOS before every piece)
    import tokenizers
    t = tokenizers.Tokenizer.from_str(hf.vector_blob(V).decode("utf-8"))
    out, start = [], 0
    for end in text.pieces(TEXT):
        out += t.encode(TEXT[start:end].decode("utf-8")).ids
        start = end
    i = text.first_diff(out, V["tokens"])
    print("\nlibrary, the vector's file, add_special_tokens true per piece: %s"
          % ("same tokens" if i is None else "differs at %d (%d tokens, vector %d: a BOS per piece)"
             % (i, len(out), len(V["tokens"]))))
    ok = bounds() and ok
    ok = dataset() and ok
    print("\n%d refused, %d accepted, %d bound and %d dataset cases; %s"
          % (len(REFUSED), len(ACCEPTED), len(BOUNDS), len(DATASET),
             "every case as 11.7a says" if ok else "SOME CASE NOT AS 11.7a SAYS"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
