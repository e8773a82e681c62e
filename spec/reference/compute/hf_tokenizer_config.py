"""A Hugging Face `tokenizer_config.json` read as spec/COMPUTE.md section 11.7b says, written from
the spec alone (no Rust read): given the values 11.7a gave from the task's `tokenizer.json` (its
`tokens` and their `types` by id, 11.7a's `token_type`: 3 for an added token with `special`
true, 4 for one with `special` false, 1 otherwise; the post-processor's BOS id or None, and
whether the post-processor adds it) and the config's bytes, the chat template, BOS id and EOS id
11.7 then builds with, or a refusal, raised as Refused (a ValueError, field `tokenizer_config`;
for 11.7c's file its subclass ChatTemplateRefused, field `chat_template`, below) whose message
is 11.7b's reason for the step and its `step` that step's number (1-9). The steps are checked
in 11.7b's numbered order, so the first failure is the one reported.

    keys = hf_tokenizer.keys_from_tokenizer_json(tokenizer_json)
    template, bos, eos = read(keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"],
                              keys.get("tokenizer.ggml.bos_token_id"),
                              keys["tokenizer.ggml.add_bos_token"], config_blob)
    keys = apply(keys, template, bos, eos)          # 11.7's keys with the config's values

Step 2 is 11.7a's step 2 exactly, so it is hf_tokenizer.scan (the same scanner, in document
order, before anything is built), its reason re-prefixed "not a tokenizer_config.json: ".

Reasons: 11.7b gives each step's opening ("a tokenizer_config.json of N bytes, over the limit of
4194304", "not a tokenizer_config.json: ...", "add_eos_token: ...", ..., step 9 "the key"); the
text after it is this port's. Where 11.7b is silent this port chose (each marked `ASSUMED`):
- the special-token phrases ("is not a token of the tokenizer", "is the string of more than one
  token id", "is not a special token") follow "KEY: " and T written as a JSON string.
- step 7's "bos_token: absent, ..." is the reason for `null` as for an absent key.
- step 9's `unk_token` ... `mask_token` may also be absent (11.7b lists only "a token value
  naming a special token or `null`"); an `added_tokens_decoder` value that is not an object, or
  whose `content` is not a string, fails "content equal to tokens[i]"; its `special` must be a
  JSON boolean when present (`null` is neither absent nor false); the key is checked (digits,
  no leading zero, below len(tokens)) before the value, `content` before `special`.
- "exactly one token string": the token strings are compared as Python str (code points), the
  tokens list being 11.7a's `tokens` by id (duplicates in it, which 11.7 refuses only later when
  it builds the tokenizer, make a match "more than one token id").

11.7c, a `chat_template.jinja` blob: `read`, `read_keys` and `read_pair` take it as an optional
last argument `chat_template` (bytes; None, the default, when the task names no such blob, and
then step 6 reads the config's key as before; b"" is an empty file, an empty template). Given,
step 6 reads the file (`chat_template_file`) in place of the key, which is not looked up at all
(its value, whatever it is, is still inside the document steps 1-3 parse and scan). A refusal of
the file is a ChatTemplateRefused, a subclass of Refused (so it is still raised at 11.7b's step
6, after steps 1-5 of the config and before its steps 7-9, and `except Refused` still catches
it), told apart from a refusal of the config by `field` ("chat_template" instead of
"tokenizer_config": invalid blob `chat_template`) or isinstance; its `step` is 6 (11.7b's step
it comes at) and its `file_step` 11.7c's step (1 or 2). Reasons: 11.7c's openings ("a
chat_template.jinja of N bytes, over the limit of 4194304", "not UTF-8: "); after "not UTF-8: "
the failure is Python's codec's reason and the offset of the first byte it refuses (ASSUMED:
11.7c says only "the failure").
- 11.7c step 1's length is the blob's byte length as uploaded (the spec now says so); the
  template is the file's text as it is, and 11.8 makes its line ends LF when it is compiled
  (`lf_line_ends` below, which the experiment applies before comparing).
- 11.11 item 3's field refusal (a `chat_template` without a `tokenizer_config`) is a check of the
  task, not of a blob, and is not modelled here: a caller passes a file only with a config.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_tokenizer as hf  # noqa: E402  (11.7a's step-2 scanner)

MAX_TOKENIZER_CONFIG_BYTES = 4 * 1024 * 1024  # 11.7b 1: 4 MiB, 4,194,304 bytes, before parsing
SPECIAL = 3  # 11.7a's type of an added token with `special` true
STEP9_TOKENS = ("unk_token", "pad_token", "sep_token", "cls_token", "mask_token")  # 11.7b 9, in order
MAX_CHAT_TEMPLATE_BYTES = 4 * 1024 * 1024  # 11.7c 1: 4 MiB, 4,194,304 bytes, on the blob's length


class Refused(ValueError):
    """An 11.7b refusal: invalid blob `tokenizer_config`; str(e) is the reason; `step` the number
    of 11.7b's step."""

    field = "tokenizer_config"

    def __init__(self, step, reason):
        ValueError.__init__(self, reason)
        self.step = step


class ChatTemplateRefused(Refused):
    """An 11.7c refusal: invalid blob `chat_template` (not `tokenizer_config`); str(e) is the
    reason; `step` is 6, the step of 11.7b at which the file is read, and `file_step` the number
    of 11.7c's step (1 or 2)."""

    field = "chat_template"

    def __init__(self, file_step, reason):
        Refused.__init__(self, 6, reason)
        self.file_step = file_step


def refuse(step, reason):
    raise Refused(step, reason)


def chat_template_file(blob):
    """11.7c: the template a `chat_template.jinja` blob holds, or ChatTemplateRefused."""
    blob = bytes(blob)
    if len(blob) > MAX_CHAT_TEMPLATE_BYTES:                                  # 11.7c 1
        raise ChatTemplateRefused(1, "a chat_template.jinja of %d bytes, over the limit of %d"
                                  % (len(blob), MAX_CHAT_TEMPLATE_BYTES))
    try:
        text = blob.decode("utf-8")  # 11.7c 2: strict (no overlong forms, surrogates, > U+10FFFF)
    except UnicodeDecodeError as e:
        raise ChatTemplateRefused(2, "not UTF-8: %s at byte %d" % (e.reason, e.start))
    return text  # 11.7c 3: the text as it is (a BOM stays); 11.8 makes its line ends LF


def lf_line_ends(template):
    """11.8: a template's source with every CR LF, then every remaining CR, made LF."""
    return template.replace("\r\n", "\n").replace("\r", "\n")


def show(v):
    return hf.show(v)[:80]


def q(t):
    """A token string in a reason: as a JSON string."""
    return json.dumps(t, ensure_ascii=False)[:80]


# ---------- 1, 2, 3 ----------
def parse(blob):
    if len(blob) > MAX_TOKENIZER_CONFIG_BYTES:                                # 1
        refuse(1, "a tokenizer_config.json of %d bytes, over the limit of %d"
               % (len(blob), MAX_TOKENIZER_CONFIG_BYTES))
    try:
        s = blob.decode("utf-8")  # 11.7a 2: UTF-8 (strict)
    except UnicodeDecodeError as e:
        refuse(2, "not a tokenizer_config.json: not UTF-8 from byte %d" % e.start)
    try:
        hf.scan(s)  # 11.7a 2 exactly: dialect, depth, repeated keys, key and value counts
    except hf.Refused as e:
        reason = str(e)[len("invalid blob tokenizer: "):].replace("tokenizer.json ", "the file ")
        refuse(2, "not a tokenizer_config.json: " + reason)
    try:
        return json.loads(s, parse_int=hf._parse_int, parse_constant=hf._no_constant)
    except (ValueError, RecursionError) as e:  # scan accepted it: a gap in this port
        raise RuntimeError("json refuses what scan accepted: %s" % e)


# ---------- token values and special tokens (11.7b's preamble) ----------
def token_value(step, key, v):
    """A token value: None (null), or T (a string, or an object whose `content` is a string;
    its other keys not read). Anything else refused at `step`, the reason starting `key`."""
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    refuse(step, "%s: %s is not a token value (a string, an object whose content is a string, "
                 "or null)" % (key, show(v)))


def special_token(step, key, tokens, types, t):
    """The special token named by T: the one id whose string is exactly T, of type 3."""
    ids = [i for i, s in enumerate(tokens) if s == t]
    if not ids:
        refuse(step, "%s: %s is not a token of the tokenizer" % (key, q(t)))
    if len(ids) > 1:
        refuse(step, "%s: %s is the string of more than one token id (%s)"
               % (key, q(t), ", ".join(map(str, ids[:8]))))
    i = ids[0]
    if types[i] != SPECIAL:
        refuse(step, "%s: %s is not a special token (id %d, type %d)" % (key, q(t), i, types[i]))
    return i


def is_decimal_id(k):
    return k.isascii() and k.isdigit() and (k == "0" or not k.startswith("0"))


def read(tokens, types, pp_bos, pp_adds_bos, blob, chat_template=None):
    """(chat_template or None, BOS id or None, EOS id or None) from 11.7a's values and the
    config's bytes, or Refused at 11.7b's first failing step. `chat_template`: the bytes of a
    `chat_template.jinja` blob (11.7c), read at step 6 in place of the config's key, or None."""
    types = list(types) + [1] * (len(tokens) - len(types))  # 11.7: ids past token_type's end are normal
    doc = parse(blob)                                                        # 1, 2
    if not isinstance(doc, dict):                                            # 3
        refuse(3, "not a tokenizer_config.json: not a JSON object")

    v = doc.get("add_eos_token")                                             # 4
    if not (v is None or v is False):
        refuse(4, "add_eos_token: %s, but only absent, null or false (an EOS appended to every "
                  "text is not supported)" % show(v))

    v = doc.get("add_bos_token")                                             # 5
    if not (v is None or (isinstance(v, bool) and v == pp_adds_bos)):
        refuse(5, "add_bos_token: %s, but the tokenizer.json's post-processor %s a BOS"
               % (show(v), "adds" if pp_adds_bos else "does not add"))

    if chat_template is not None:                                            # 6, by 11.7c
        template = chat_template_file(chat_template)  # the key is not read
    elif doc.get("chat_template") is None:                                   # 6
        template = None
    elif isinstance(doc["chat_template"], str):
        template = doc["chat_template"]
    elif isinstance(doc["chat_template"], list):
        v = doc["chat_template"]
        names, template = set(), None
        for j, e in enumerate(v):  # 11.7b: entry by entry, in order; `default` after the list
            if not isinstance(e, dict):
                refuse(6, "chat_template: entry %d is %s, not an object" % (j, show(e)))
            if not isinstance(e.get("name"), str):
                refuse(6, "chat_template: entry %d's name is %s, not a string" % (j, show(e.get("name"))))
            if not isinstance(e.get("template"), str):
                refuse(6, "chat_template: entry %d's template is %s, not a string" % (j, show(e.get("template"))))
            if e["name"] in names:
                refuse(6, "chat_template: entry %d's name %s is an earlier entry's" % (j, q(e["name"])))
            names.add(e["name"])
            if e["name"] == "default":
                template = e["template"]
        if "default" not in names:
            refuse(6, "chat_template: no entry named \"default\"")
    else:
        refuse(6, "chat_template: %s, neither null, a string nor a list of {name, template}"
               % show(doc["chat_template"]))

    t = token_value(7, "bos_token", doc.get("bos_token"))                    # 7
    if t is not None:
        bos = special_token(7, "bos_token", tokens, types, t)
        if pp_adds_bos and bos != pp_bos:
            refuse(7, "bos_token: %s is id %d, but the tokenizer.json's post-processor adds id %d"
                   % (q(t), bos, pp_bos))
    elif pp_adds_bos:  # ASSUMED: the same "absent" reason for null
        refuse(7, "bos_token: absent, but the tokenizer.json's post-processor adds a BOS (id %d): "
                  "transformers would render bos_token as \"\"" % pp_bos)
    else:
        bos = None

    t = token_value(8, "eos_token", doc.get("eos_token"))                    # 8
    eos = None if t is None else special_token(8, "eos_token", tokens, types, t)

    v = doc.get("split_special_tokens")                                      # 9
    if not (v is None or v is False):
        refuse(9, "split_special_tokens: %s, but only absent, null or false" % show(v))
    for key in STEP9_TOKENS:
        t = token_value(9, key, doc.get(key))  # ASSUMED: absent as null
        if t is not None:
            special_token(9, key, tokens, types, t)
    key = "additional_special_tokens"
    v = doc.get(key)
    if v is not None:
        if not isinstance(v, list):
            refuse(9, "%s: %s, neither null nor a list of token values" % (key, show(v)))
        for j, e in enumerate(v):
            k = "%s: entry %d" % (key, j)
            if e is None:
                refuse(9, "%s is null" % k)
            special_token(9, k, tokens, types, token_value(9, k, e))
    key = "added_tokens_decoder"
    v = doc.get(key)
    if v is not None:
        if not isinstance(v, dict):
            refuse(9, "%s: %s, neither null nor an object" % (key, show(v)))
        for k in sorted(v, key=lambda k: k.encode("utf-8", "surrogatepass")):  # ascending byte order
            if not is_decimal_id(k):
                refuse(9, "%s: key %s is not a decimal id without leading zeros" % (key, q(k)))
            i = int(k)
            if not i < len(tokens):
                refuse(9, "%s: key %s is not below the %d tokens" % (key, k, len(tokens)))
            e = v[k]
            content = e.get("content") if isinstance(e, dict) else None
            if not (isinstance(content, str) and content == tokens[i]):
                refuse(9, "%s: %s's content is %s, not token %d's string %s"
                       % (key, k, show(content) if isinstance(e, dict) else "(not an object)", i, q(tokens[i])))
            if types[i] not in (3, 4):
                refuse(9, "%s: %s names token %d, which is not an added token" % (key, k, i))
            special = e.get("special")
            special = False if special is None else special  # absent or null: false
            if not (isinstance(special, bool) and special == (types[i] == SPECIAL)):
                refuse(9, "%s: %s's special is %s, but token %d is %sa special token"
                       % (key, k, show(special), i, "" if types[i] == SPECIAL else "not "))
    return template, bos, eos


def apply(keys, template, bos, eos):
    """11.7's keys (hf_tokenizer.keys_from_tokenizer_json's) completed by 11.7b: the template,
    the BOS and the EOS; `add_bos_token` stays the post-processor's (the encoding is 11.7a's)."""
    keys = dict(keys)
    if template is not None:
        keys["tokenizer.chat_template"] = template
    if bos is not None:
        keys["tokenizer.ggml.bos_token_id"] = bos
    if eos is not None:
        keys["tokenizer.ggml.eos_token_id"] = eos
    return keys


def read_keys(keys, blob, chat_template=None):
    """11.7b on 11.7a's keys (hf_tokenizer.keys_from_tokenizer_json's), with 11.7c's file if given."""
    return read(keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"],
                keys.get("tokenizer.ggml.bos_token_id"), keys["tokenizer.ggml.add_bos_token"], blob,
                chat_template)


def read_pair(tokenizer_json, config, chat_template=None):
    """The blobs (bytes) read in 11.11 item 3's order: 11.7a, then 11.7b (with 11.7c's file, if
    given, at its step 6)."""
    keys = hf.keys_from_tokenizer_json(tokenizer_json)
    return apply(keys, *read_keys(keys, config, chat_template))
