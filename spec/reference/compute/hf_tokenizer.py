"""A Hugging Face `tokenizer.json` read as spec/COMPUTE.md section 11.7a says, written from the
spec alone (no Rust read): the file's bytes become the values 11.7 reads from GGUF metadata (the
`tokenizer.ggml.*` keys, as the dict text.py's Tokenizer consumes), or a refusal, raised as
Refused (a ValueError) "invalid blob tokenizer: <reason naming the field>", its `step` the number
of 11.7a's numbered refusal (1-14) that failed. The refusals are checked in that numbered order,
so the first failure is the one reported. 11.7's own checks and refusals (duplicate token
strings, merge strings, the BOS id) are then text.Tokenizer's, on those keys.

    keys = hf_tokenizer.keys_from_tokenizer_json(blob)     # blob: the file's bytes
    tok = text.Tokenizer(keys)

The bounds of 2 (JSON, nesting, keys per object, values in all) are checked by scan() on the
text, in document order, before json builds anything, so a file of millions of tiny values costs
no more than its text; the bounds of 3 (`added_tokens`) and 8 (`model.merges`) are then read off
the built lists, each at its own step (a file over both reports 3). Section 3 step 1's order for a
text dataset (11.7a, then the tokenizer's size against the model's vocabulary, then 11.7's
refusals) is dataset_tokenizer().

Where 11.7a is still silent this port chose (each choice marked `ASSUMED` below): the document's
own object counts as the first of the 127 levels (a list inside it is the second); the first
failure of 2 in document order is the one reported (all are refusal 2 either way)."""
import json
import re

MAX_BYTES = 67_108_864  # 11.7a 1: at most 67,108,864 bytes, refused on its length before parsing
MAX_DEPTH = 127  # 11.7a 2: at most 127 levels of nested objects and lists
MAX_KEYS = 262_144  # 11.7a 2: at most 262,144 keys in any object (the largest vocabulary, 11.1)
MAX_VALUES = 4_194_304  # 11.7a 2: at most 4,194,304 JSON values in all
MAX_INT = 2 ** 64 - 1  # 11.7a 2: an integer is from 0 to 2^64 - 1
MAX_ADDED = 262_144  # 11.7a 3: `added_tokens` a list of at most 262,144 objects
MAX_MERGES = 1_048_576  # 11.7a 8: `model.merges` a list of at most 1,048,576 items

TOP_KEYS = ("version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer",
            "post_processor", "decoder", "model")
MODEL_KEYS = ("type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
              "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges")
ADDED_KEYS = ("id", "content", "single_word", "lstrip", "rstrip", "normalized", "special")
ADDED_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")
ABSENT = object()


class Refused(ValueError):
    """An 11.7a refusal; `step` is the number of the refusal in 11.7a's list."""

    def __init__(self, step, reason):
        ValueError.__init__(self, "invalid blob tokenizer: " + reason)
        self.step = step


def refuse(step, reason):
    raise Refused(step, reason)


class NotInt:
    """A JSON number written without fraction or exponent but outside 0 .. 2^64 - 1 (a negative
    one, or one too long for Python's int(), which stops at 4300 digits): a number, not an
    integer (11.7a 2)."""
    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


def _parse_int(t):
    if len(t) <= 20:
        v = int(t)
        if 0 <= v <= MAX_INT:
            return v
    return NotInt(t)


def _no_constant(name):
    raise ValueError("%s is not JSON" % name)


def is_int(x):
    """11.7a 2: an integer is a JSON number written without fraction or exponent (`5.0` is not
    one), from 0 to 2^64 - 1 (`-1` and 2^64 are not)."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_INT


def is_uint(x):
    return is_int(x)


# ---------- 2: the JSON text, checked and counted while it is read ----------
_WS = re.compile(r"[ \t\n\r]*")
_STRING = r'"([^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*)"'
_KEY = re.compile(_STRING + r"[ \t\n\r]*:[ \t\n\r]*")
_SCALAR = re.compile(r"(?:" + _STRING + r"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
                     r"|true|false|null)[ \t\n\r]*")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _NotJson(Exception):
    def __init__(self, pos, what):
        Exception.__init__(self, what)
        self.pos = pos


def _unescape(raw, pos):
    """A JSON string's text (between its quotes) decoded; an unpaired surrogate escape refused (a
    pair decodes to one character, so any U+D800-U+DFFF left is unpaired)."""
    if "\\" not in raw:
        return raw
    v = json.loads('"' + raw + '"')
    if _SURROGATE.search(v):
        raise _NotJson(pos, "an unpaired surrogate escape")
    return v


def scan(s):
    """11.7a 2 on the decoded text, in document order, before anything is built: the grammar of
    RFC 8259 (no byte-order mark, no NaN or Infinity), no unpaired surrogate escape, at most
    MAX_DEPTH levels of objects and lists, no key twice in an object and at most MAX_KEYS keys,
    at most MAX_VALUES values (each object, list, key, string, number, boolean and null one).
    Returns the number of values, or Refused (2) at the first failure."""
    n, ws = len(s), _WS.match
    try:
        if s.startswith("\ufeff"):
            raise _NotJson(0, "a byte-order mark")
        pos = ws(s, 0).end()
        count, stack, want_key = 0, [], False  # stack: a set of keys per open object, None per list
        while True:
            if want_key:  # a key and its colon
                keys = stack[-1]
                m = _KEY.match(s, pos)
                if m is None:
                    raise _NotJson(pos, "a key and a colon expected")
                if len(keys) == MAX_KEYS:
                    refuse(2, "an object at byte %d has more than 262,144 keys" % _byte(s, pos))
                count += 1
                if count > MAX_VALUES:
                    refuse(2, "tokenizer.json holds more than 4,194,304 JSON values (the next at byte %d)"
                           % _byte(s, pos))
                k = _unescape(m.group(1), pos)
                if k in keys:
                    refuse(2, "an object at byte %d has the key %s twice" % (_byte(s, pos), json.dumps(k)))
                keys.add(k)
                pos, want_key = m.end(), False
            # a value at pos
            count += 1
            if count > MAX_VALUES:
                refuse(2, "tokenizer.json holds more than 4,194,304 JSON values (the next at byte %d)"
                       % _byte(s, pos))
            c = s[pos:pos + 1]
            if c == "{" or c == "[":
                if len(stack) == MAX_DEPTH:  # ASSUMED: the document's own object is level 1
                    refuse(2, "tokenizer.json nests more than 127 levels of objects and lists (byte %d)"
                           % _byte(s, pos))
                pos = ws(s, pos + 1).end()
                if s.startswith("}" if c == "{" else "]", pos):  # empty
                    pos = ws(s, pos + 1).end()
                else:
                    stack.append(set() if c == "{" else None)
                    want_key = c == "{"
                    continue
            else:
                m = _SCALAR.match(s, pos)
                if m is None:
                    raise _NotJson(pos, "a value expected")
                if m.group(1) is not None:
                    _unescape(m.group(1), pos)
                pos = m.end()
            # after a value: a comma, or the end of its container, or of the text
            while True:
                if not stack:
                    if pos != n:
                        raise _NotJson(pos, "text after the document")
                    return count
                c, top = s[pos:pos + 1], stack[-1]
                if c == ",":
                    pos = ws(s, pos + 1).end()
                    want_key = top is not None
                    break
                if c != ("]" if top is None else "}"):
                    raise _NotJson(pos, "a comma or %s expected" % ("]" if top is None else "}"))
                stack.pop()
                pos = ws(s, pos + 1).end()
    except _NotJson as e:
        refuse(2, "tokenizer.json is not JSON (%s at byte %d)" % (e, _byte(s, e.pos)))


def _byte(s, pos):
    return len(s[:pos].encode("utf-8", "surrogatepass"))


def parse(blob):
    """11.7a 1 and 2: the document (json's objects: 2 has refused any key twice)."""
    if len(blob) > MAX_BYTES:
        refuse(1, "tokenizer.json is %d bytes, over 67,108,864" % len(blob))
    try:
        s = blob.decode("utf-8")  # strict: no overlong form, no encoded surrogate
    except UnicodeDecodeError as e:
        refuse(2, "tokenizer.json is not UTF-8 from byte %d" % e.start)
    scan(s)  # every failure of 2, before the document is built
    try:
        return json.loads(s, parse_int=_parse_int, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # scan accepted it: a gap in this port
        raise RuntimeError("json refuses what scan accepted: %s" % e)


def show(v):
    """v as JSON, a NotInt as the number it was written as (shortened past 24 digits)."""
    nums = []

    def num(o):
        nums.append(o.text if len(o.text) <= 24 else "%s...(%d digits)" % (o.text[:12], len(o.text.lstrip("-"))))
        return "\0%d\0" % (len(nums) - 1)
    out = json.dumps(v, ensure_ascii=False, default=num)
    for j, t in enumerate(nums):
        out = out.replace('"\\u0000%d\\u0000"' % j, t)
    return out


def is_false(v):
    return v is False


def must(step, o, key, path, ok, want, default=ABSENT):
    """o[key], or `default` (the value 11.7a writes in brackets) when absent, must pass ok(v);
    `want` says what it must be, for the reason."""
    v = o.get(key, default)
    if v is ABSENT:
        refuse(step, "%s.%s is absent" % (path, key))
    if not ok(v):
        refuse(step, "%s.%s is %s%s, not %s" % (path, key, show(v), " (absent)" if key not in o else "", want))
    return v


# ---------- 3 ----------
def shape(doc):
    """The document and its `added_tokens` [empty]: [(id, content, flags)] in list order."""
    if not isinstance(doc, dict):
        refuse(3, "tokenizer.json is not an object")
    for k in doc:
        if k not in TOP_KEYS:
            refuse(3, "tokenizer.json has the unknown key %s" % show(k))
    if "model" not in doc:
        refuse(3, "model is absent")
    x = doc.get("added_tokens", [])
    if not isinstance(x, list):
        refuse(3, "added_tokens is not a list")
    if len(x) > MAX_ADDED:
        refuse(3, "added_tokens holds %d items, over 262,144" % len(x))
    out = []
    for j, a in enumerate(x):
        ap = "added_tokens[%d]" % j
        if not isinstance(a, dict):
            refuse(3, "%s is not an object" % ap)
        for k in a:
            if k not in ADDED_KEYS:
                refuse(3, "%s has the unknown key %s" % (ap, show(k)))
        i = must(3, a, "id", ap, is_uint, "an integer >= 0")
        c = must(3, a, "content", ap, lambda v: isinstance(v, str), "a string")
        flags = {k: must(3, a, k, ap, lambda v: isinstance(v, bool), "a boolean", False) for k in ADDED_FLAGS}
        out.append((i, c, flags))
    return out


# ---------- 5 ----------
def is_type(x, t):
    return isinstance(x, dict) and x.get("type") == t


def byte_level(x, path):
    """A ByteLevel pre-tokenizer: add_prefix_space false [true], use_regex true [true]; its
    other keys (trim_offsets) are not read."""
    must(5, x, "add_prefix_space", path, is_false, "false", True)
    must(5, x, "use_regex", path, lambda v: v is True, "true", True)


def pre_tokenizer(x, path="pre_tokenizer"):
    """The 11.7 `tokenizer.ggml.pre` name: `gpt2` or `smollm`; anything else refused. Other keys
    of these objects are not read."""
    if is_type(x, "ByteLevel"):
        byte_level(x, path)
        return "gpt2"
    if not is_type(x, "Sequence"):
        refuse(5, "%s is %s, neither a ByteLevel nor a Sequence [Digits or Split, ByteLevel]"
               % (path, show(x)[:80]))
    ps = x.get("pretokenizers", ABSENT)
    if not isinstance(ps, list) or len(ps) != 2:
        refuse(5, "%s.pretokenizers is %s, not a list of two pre-tokenizers"
               % (path, "absent" if ps is ABSENT else show(ps)[:80]))
    d, dp = ps[0], path + ".pretokenizers[0]"
    if is_type(d, "Digits"):
        must(5, d, "individual_digits", dp, lambda v: v is True, "true", False)
    elif is_type(d, "Split"):
        pat = d.get("pattern", ABSENT)
        if not (isinstance(pat, dict) and list(pat) == ["Regex"] and pat["Regex"] == "\\p{N}"):
            refuse(5, "%s.pattern is %s, not {\"Regex\": \"\\\\p{N}\"}" % (dp, "absent" if pat is ABSENT else show(pat)))
        must(5, d, "behavior", dp, lambda v: v == "Isolated", "\"Isolated\"")
        must(5, d, "invert", dp, lambda v: v is False or v is None, "false or null", None)
    else:
        refuse(5, "%s is %s, neither a Digits nor a Split" % (dp, show(d)[:80]))
    bp = path + ".pretokenizers[1]"
    if not is_type(ps[1], "ByteLevel"):
        refuse(5, "%s is %s, not a ByteLevel" % (bp, show(ps[1])[:80]))
    byte_level(ps[1], bp)
    return "smollm"


# ---------- 6 ----------
def template_bos(x, path):
    """A TemplateProcessing's BOS id, or None. Other keys (`pair`, `type_id`,
    `special_tokens[NAME].tokens`, ...) are not read, nor whether NAME is that id's string."""
    single, sp = x.get("single", ABSENT), path + ".single"

    def piece(p, kind, i):
        """The inner object's `id` of single[i], which must be {kind: {"id": ...}}."""
        pp = "%s[%d]" % (sp, i)
        # other keys of the wrapper objects are not read (6)
        if not isinstance(p, dict) or not isinstance(p.get(kind), dict):
            refuse(6, "%s is %s, not a %s piece" % (pp, show(p)[:80], kind))
        inner = p[kind]
        if "id" not in inner:
            refuse(6, "%s.%s.id is absent" % (pp, kind))
        return inner["id"], "%s.%s.id" % (pp, kind)

    if not isinstance(single, list) or len(single) not in (1, 2):
        refuse(6, "%s is %s, not [$A] or [special, $A]" % (sp, "absent" if single is ABSENT else show(single)[:80]))
    if len(single) == 2:  # first piece first
        name, _ = piece(single[0], "SpecialToken", 0)
    a, ap = piece(single[-1], "Sequence", len(single) - 1)
    if a != "A":
        refuse(6, "%s is %s, not \"A\"" % (ap, show(a)))
    if len(single) == 1:
        return None
    st = x.get("special_tokens", ABSENT)
    if not isinstance(st, dict):
        refuse(6, "%s.special_tokens is %s, not an object" % (path, "absent" if st is ABSENT else show(st)[:80]))
    if not isinstance(name, str) or name not in st:
        refuse(6, "%s.special_tokens has no entry %s" % (path, show(name)))
    ep = "%s.special_tokens[%s]" % (path, show(name))
    e = st[name]
    ids = e.get("ids", ABSENT) if isinstance(e, dict) else ABSENT
    if not isinstance(ids, list) or len(ids) != 1 or not is_int(ids[0]):
        refuse(6, "%s.ids is %s, not a list of exactly one integer"
               % (ep, "absent" if ids is ABSENT else show(ids)[:80]))
    return ids[0]


def post_processor(x, path="post_processor", nested=False):
    """The BOS id the post-processor puts first, or None."""
    if x is None and not nested:
        return None
    if is_type(x, "ByteLevel"):  # other keys not read
        return None
    if is_type(x, "TemplateProcessing"):
        return template_bos(x, path)
    if nested or not is_type(x, "Sequence"):
        refuse(6, "%s is %s, not %s" % (path, show(x)[:80], "a ByteLevel or a TemplateProcessing (none nested)"
                                          if nested else "null, a ByteLevel, a TemplateProcessing or a Sequence"))
    ps = x.get("processors", ABSENT)  # the Sequence's other keys are not read (6)
    if not isinstance(ps, list):
        refuse(6, "%s.processors is %s, not a list" % (path, "absent" if ps is ABSENT else show(ps)[:80]))
    bos, template = None, None
    for i, p in enumerate(ps):  # empty allowed: no BOS
        pp = "%s.processors[%d]" % (path, i)
        b = post_processor(p, pp, nested=True)
        if is_type(p, "TemplateProcessing"):
            if template is not None:
                refuse(6, "%s is a second TemplateProcessing (the first is %s)" % (pp, template))
            template, bos = pp, b
    return bos


# ---------- 8, 9 ----------
def model_shape(x, path="model"):
    if not isinstance(x, dict):
        refuse(8, "%s is not an object" % path)
    for k in x:
        if k not in MODEL_KEYS:
            refuse(8, "%s has the unknown key %s" % (path, show(k)))
    vocab = x.get("vocab", ABSENT)
    if not isinstance(vocab, dict):
        refuse(8, "%s.vocab is %s, not an object" % (path, "absent" if vocab is ABSENT else show(vocab)[:80]))
    for s, i in vocab.items():
        if not is_uint(i):
            refuse(8, "%s.vocab[%s] is %s, not an integer >= 0" % (path, show(s), show(i)))
    merges = x.get("merges", [])
    if not isinstance(merges, list):
        refuse(8, "%s.merges is not a list" % path)
    if len(merges) > MAX_MERGES:
        refuse(8, "%s.merges holds %d items, over 1,048,576" % (path, len(merges)))
    for j, m in enumerate(merges):  # the two forms may mix
        if not (isinstance(m, str) or (isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m))):
            refuse(8, "%s.merges[%d] is %s, neither a string nor a list of two strings" % (path, j, show(m)[:80]))
    return vocab, merges


def model_values(x, path="model"):
    must(9, x, "type", path, lambda v: v == "BPE", "\"BPE\"")
    for k in ("dropout", "unk_token"):
        must(9, x, k, path, lambda v: v is None, "null", None)
    for k in ("continuing_subword_prefix", "end_of_word_suffix"):
        must(9, x, k, path, lambda v: v is None or v == "", "null or \"\"", None)
    for k in ("fuse_unk", "byte_fallback", "ignore_merges"):
        must(9, x, k, path, is_false, "false", False)


def keys_from_tokenizer_json(blob):
    """The GGUF-style tokenizer keys (11.7) a tokenizer.json's bytes give, or Refused."""
    doc = parse(blob)                                                     # 1, 2
    added = shape(doc)                                                    # 3
    for k in ("truncation", "padding", "normalizer"):                     # 4
        if doc.get(k) is not None:
            refuse(4, "%s is %s, not null" % (k, show(doc[k])[:80]))
    pre = pre_tokenizer(doc.get("pre_tokenizer"))                         # 5
    bos = post_processor(doc.get("post_processor"))                       # 6
    dec = doc.get("decoder")                                              # 7
    if dec is not None and not is_type(dec, "ByteLevel"):  # other keys not read
        refuse(7, "decoder is %s, neither null nor a ByteLevel" % show(dec)[:80])
    vocab, merges = model_shape(doc["model"])                             # 8
    model_values(doc["model"])                                            # 9
    by_id = {}                                                            # 10
    for s, i in vocab.items():
        if i in by_id:
            refuse(10, "model.vocab has the id %d twice (%s and %s)" % (i, show(by_id[i]), show(s)))
        by_id[i] = s
    for i in range(len(vocab)):
        if i not in by_id:
            refuse(10, "model.vocab's ids are not 0 .. %d: %d is missing" % (len(vocab) - 1, i))
    types, seen, prev = {}, set(), None                                   # 11
    for j, (i, c, flags) in enumerate(added):  # token by token, each token's checks in order
        ap = "added_tokens[%d]" % j
        for k in ("single_word", "lstrip", "rstrip"):
            if flags[k]:
                refuse(11, "%s.%s is true" % (ap, k))
        if i < len(vocab) and by_id[i] != c:
            refuse(11, "%s (id %d) is %s, but model.vocab has %s there" % (ap, i, show(c), show(by_id[i])))
        if i >= len(vocab):
            if prev is not None and i < prev:
                refuse(11, "%s.id %d is not in model.vocab and is smaller than the previous such added "
                           "token's, %d (they must come in ascending order)" % (ap, i, prev))
            prev = i
        if i in seen:
            refuse(11, "%s.id %d appears twice among the added tokens" % (ap, i))
        seen.add(i)
        types[i] = 3 if flags["special"] else 4  # `normalized` is not read (no normalizer)
    ids = dict(by_id)                                                     # 12
    for i, c, _ in added:
        ids[i] = c
    n = len(ids)
    for i in range(n):
        if i not in ids:
            refuse(12, "the ids of model.vocab and added_tokens are not 0 .. %d: %d is missing" % (n - 1, i))
    if bos is not None and not bos < n:                                   # 13
        refuse(13, "post_processor's BOS id %d is not below %d tokens" % (bos, n))
    out = []                                                              # 14
    for j, m in enumerate(merges):
        if isinstance(m, list):
            for side, p in enumerate(m):
                if " " in p:
                    refuse(14, "model.merges[%d][%d] %s has a space" % (j, side, show(p)))
            m = m[0] + " " + m[1]
        out.append(m)
    keys = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": [ids[i] for i in range(n)],
        "tokenizer.ggml.token_type": [types.get(i, 1) for i in range(n)],
        "tokenizer.ggml.merges": out,
        "tokenizer.ggml.add_bos_token": bos is not None,
    }
    if bos is not None:
        keys["tokenizer.ggml.bos_token_id"] = bos
    return keys


class TooManyTokens(ValueError):
    """Section 3 step 1: a text dataset's tokenizer with more tokens than the model's vocabulary
    (field `dataset.tokenizer`, both sizes named)."""


def dataset_tokenizer(blob, vocab_size):
    """Section 3 step 1 for a text dataset whose tokenizer blob is a tokenizer.json (a GGUF blob,
    read by 11.3, is not this port's): refused in its order, 11.7a (Refused), then more tokens
    than `vocab_size` (TooManyTokens, counted before the tokenizer is built), then 11.7's
    refusals (text.Tokenizer's ValueError). Returns the built text.Tokenizer."""
    import text
    keys = keys_from_tokenizer_json(blob)
    n = len(keys["tokenizer.ggml.tokens"])
    if n > vocab_size:
        raise TooManyTokens("field dataset.tokenizer: the tokenizer has %d tokens, the model's "
                            "vocabulary %d" % (n, vocab_size))
    return text.Tokenizer(keys)


def vector_blob(v):
    """The bytes of a vector's `tokenizer_json` (held there as a JSON object, not as bytes)."""
    tj = v["tokenizer_json"]
    return tj.encode("utf-8") if isinstance(tj, str) else json.dumps(tj, ensure_ascii=False).encode("utf-8")


def fields(path=None):
    """[(field, ok, message)]: the vector's `tokenizer_json` read by 11.7a, built by 11.7 (text.py)
    and tokenizing the vector's `text` by section 3 must give exactly its `tokens`."""
    import text
    v = json.load(open(path or text.VECTOR, encoding="utf-8"))
    tok = text.Tokenizer(keys_from_tokenizer_json(vector_blob(v)))
    _, got = text.token_stream(v["text"].encode("utf-8"), tok)
    want = v["tokens"]
    i = text.first_diff(got, want)
    if i is None:
        return [("tokenizer_json tokens", True, "%d values" % len(want))]
    g = got[i] if i < len(got) else "(end)"
    w = want[i] if i < len(want) else "(end)"
    return [("tokenizer_json tokens", False, "first differs at index %d: got %s, want %s (lengths %d and %d)"
             % (i, g, w, len(got), len(want)))]


if __name__ == "__main__":
    import sys
    ok = True
    for field, good, msg in fields(sys.argv[1] if len(sys.argv) > 1 else None):
        ok = ok and good
        print("compute-text.json %s: %s %s" % (field, "ok" if good else "MISMATCH", msg))
    sys.exit(0 if ok else 1)
