"""A Hugging Face `tokenizer_config.json` read as spec/COMPUTE.md section 11.7b says, written from
the spec alone (no Rust read): given the values 11.7a gave from the task's `tokenizer.json` (its
`tokens`, the post-processor's BOS id or None, and whether the post-processor adds it) and the
config's bytes, the chat template, BOS id and EOS id 11.7 then builds with, or a refusal, raised
as Refused (a ValueError, field `tokenizer_config`) whose message is the reason and starts with
the key (or phrase) 11.7b names for the step, its `step` that step's number (1-8). The steps are
checked in 11.7b's numbered order, so the first failure is the one reported.

    keys = hf_tokenizer.keys_from_tokenizer_json(tokenizer_json)
    tokens = keys["tokenizer.ggml.tokens"]
    bos = keys.get("tokenizer.ggml.bos_token_id")
    template, bos, eos = read(tokens, bos, keys["tokenizer.ggml.add_bos_token"], config_blob)
    keys = apply(keys, template, bos, eos)          # 11.7's keys with the config's values

Step 2 is 11.7a's step 2 exactly, so it is hf_tokenizer.scan (the same scanner, in document
order, before anything is built), its reason re-prefixed "not a tokenizer_config.json".

Where 11.7b is silent this port chose (each marked `ASSUMED` below):
- step 1 names no key: its reason starts "size".
- `bos_token` absent or null ("nothing") leaves the tokenizer.json's BOS (the post-processor's,
  if any) as it is: the BOS id returned is then that one (so the template's `bos_token` is its
  string), not None. (The other reading, no BOS at all, would change how text is encoded, which
  11.7b's preamble says it never does.)
- in a list-form `chat_template`, each entry is checked in list order (object, `name` a string,
  `template` a string, `name` not seen before), and the missing `default` is checked after the
  whole list; all are refusals of `chat_template` either way.
- "exactly one token string": the token strings are compared as Python str (code points), the
  tokens list being 11.7a's `tokens` by id (duplicates in it, which 11.7 refuses only later when
  it builds the tokenizer, make a match "more than one token").
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_tokenizer as hf  # noqa: E402  (11.7a's step-2 scanner)

MAX_TOKENIZER_CONFIG_BYTES = 4 * 1024 * 1024  # 11.7b 1: 4 MiB, 4,194,304 bytes, before parsing


class Refused(ValueError):
    """An 11.7b refusal: invalid blob `tokenizer_config`; str(e) is the reason, starting with the
    key 11.7b names; `step` the number of 11.7b's step."""

    field = "tokenizer_config"

    def __init__(self, step, reason):
        ValueError.__init__(self, reason)
        self.step = step


def refuse(step, reason):
    raise Refused(step, reason)


def show(v):
    return hf.show(v)[:80]


# ---------- 1, 2, 3 ----------
def parse(blob):
    if len(blob) > MAX_TOKENIZER_CONFIG_BYTES:  # ASSUMED: step 1 names no key; "size"
        refuse(1, "size: the tokenizer_config.json is %d bytes, over 4,194,304 "
                  "(MAX_TOKENIZER_CONFIG_BYTES)" % len(blob))
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


# ---------- 7, 8 ----------
def token_text(doc, key):
    """bos_token / eos_token's value: None (absent or null), or its text (a string, or an
    object whose `content` is a string; its other keys ignored)."""
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    refuse(7 if key == "bos_token" else 8,
           "%s is %s: neither null, a string, nor an object whose content is a string" % (key, show(v)))


def lookup(tokens, text, key):
    step = 7 if key == "bos_token" else 8
    ids = [i for i, t in enumerate(tokens) if t == text]
    if not ids:
        refuse(step, "%s %s is not a token of the tokenizer.json" % (key, show(text)))
    if len(ids) > 1:
        refuse(step, "%s %s is more than one token (ids %s)" % (key, show(text), ", ".join(map(str, ids[:8]))))
    return ids[0]


def read(tokens, pp_bos, pp_adds_bos, blob):
    """(chat_template or None, BOS id or None, EOS id or None) from 11.7a's values and the
    config's bytes, or Refused at 11.7b's first failing step."""
    doc = parse(blob)                                                        # 1, 2
    if not isinstance(doc, dict):                                            # 3
        refuse(3, "not a JSON object (the top level is %s)" % type(doc).__name__)

    v = doc.get("add_eos_token")                                             # 4
    if not (v is None or v is False):
        refuse(4, "add_eos_token is %s: only absent, null or false (an EOS appended to every text "
                  "is not supported)" % show(v))

    v = doc.get("add_bos_token")                                             # 5
    if not (v is None or (isinstance(v, bool) and v == pp_adds_bos)):
        refuse(5, "add_bos_token is %s, but the tokenizer.json's post-processor %s a BOS"
               % (show(v), "adds" if pp_adds_bos else "does not add"))

    v = doc.get("chat_template")                                             # 6
    if v is None:
        template = None
    elif isinstance(v, str):
        template = v
    elif isinstance(v, list):
        names, template = set(), None
        for j, e in enumerate(v):  # ASSUMED: entry by entry, then `default`
            if not isinstance(e, dict):
                refuse(6, "chat_template[%d] is %s, not an object" % (j, show(e)))
            if not isinstance(e.get("name"), str):
                refuse(6, "chat_template[%d].name is %s, not a string" % (j, show(e.get("name"))))
            if not isinstance(e.get("template"), str):
                refuse(6, "chat_template[%d].template is %s, not a string" % (j, show(e.get("template"))))
            if e["name"] in names:
                refuse(6, "chat_template[%d].name %s appears twice" % (j, show(e["name"])))
            names.add(e["name"])
            if e["name"] == "default":
                template = e["template"]
        if "default" not in names:
            refuse(6, "chat_template has no entry named \"default\"")
    else:
        refuse(6, "chat_template is %s: neither null, a string nor a list of {name, template}" % show(v))

    bos = pp_bos                                                             # 7
    t = token_text(doc, "bos_token")
    if t is not None:
        i = lookup(tokens, t, "bos_token")
        if pp_adds_bos and i != pp_bos:
            refuse(7, "bos_token %s is id %d, but the tokenizer.json's post-processor adds id %d"
                   % (show(t), i, pp_bos))
        bos = i
    # else ASSUMED: "nothing" keeps the tokenizer.json's BOS (the post-processor's, or none)

    eos = None                                                               # 8
    t = token_text(doc, "eos_token")
    if t is not None:
        eos = lookup(tokens, t, "eos_token")
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


def read_pair(tokenizer_json, config):
    """The two blobs (bytes) read in 11.11 item 3's order: 11.7a, then 11.7b."""
    keys = hf.keys_from_tokenizer_json(tokenizer_json)
    tpl, bos, eos = read(keys["tokenizer.ggml.tokens"], keys.get("tokenizer.ggml.bos_token_id"),
                         keys["tokenizer.ggml.add_bos_token"], config)
    return apply(keys, tpl, bos, eos)
