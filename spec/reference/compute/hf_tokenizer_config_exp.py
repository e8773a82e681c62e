"""Self-test of hf_tokenizer_config.py (spec/COMPUTE.md 11.7b): tokenizer_config.json files that
11.7b refuses, each checked to be refused at the step 11.7b's numbered order reports first (cases
with two failures check that order) with the reason starting as 11.7b says, and files it accepts,
each checked to give the chat template, BOS id and EOS id 11.7b prescribes. The tokenizer.json
beside them is compute-text.json's `tokenizer_json` read by 11.7a (hf_tokenizer.py): as it is
(its TemplateProcessing adds the BOS `<|im_start|>`, id 96; `<|im_end|>` is 97), with
`post_processor` null (no BOS), or with `post_processor` null and an added token 110 whose
string `<|im_end|>` (or `!`) repeats a vocabulary token's (11.7a accepts it; 11.7 refuses the
duplicate only when it builds the tokenizer, after 11.7b), or with `post_processor` null and an
added token 110 `zz` with `special` false (type 4, not a special token).

    python3 hf_tokenizer_config_exp.py [--transformers PYTHON]

With --transformers, PYTHON (an interpreter with `transformers` and `jinja2`) loads every
accepted pair with AutoTokenizer.from_pretrained(dir) (PreTrainedTokenizerFast.from_pretrained where
transformers 4 asks for a config.json) and the report sets beside 11.7b's values
what it reads: the chat template it renders (for the list form: which entry), its
bos_token_id / eos_token_id, a plain prompt's ids (add_special_tokens true) and a chat's ids
(apply_chat_template, tokenize true), the last two against 11.7's encode with its BOS rule (for
the chat, 11.8's: no second BOS when the rendered text starts with the BOS token's string; the
spec's chat rendered here by jinja2 with transformers' settings, trim_blocks and lstrip_blocks,
standing in for minijinja). Exit 1 if a case does not go as 11.7b says.

11.7c, a `chat_template.jinja` beside the config (printed after 11.7b's cases, which print as
before): files it refuses (invalid blob `chat_template`, reported at 11.7b's step 6: each checked
for the field, 11.7b's step, 11.7c's step and the reason's opening; cases with a config that
also fails check which comes first) and files it accepts whatever the config's key holds (CR LF,
lone CR, a BOM, an empty file, 4 MiB exactly; beside a config whose `chat_template` is a string,
7, a list without `default`, a template that raises, or absent), each checked to give 11.7c's
template. With --transformers the accepted ones are loaded as above with the file written as
`chat_template.jinja` beside `tokenizer_config.json`, and the template `transformers` ends up
with (`tokenizer.chat_template`) is compared with 11.7c's too; the refused files whose config
is otherwise fine are loaded as well, and what `transformers` does with them is shown."""
import copy, json, os, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hf_tokenizer as hf  # noqa: E402
import hf_tokenizer_config as hc  # noqa: E402

V = json.load(open(os.path.join(HERE, "..", "..", "vectors", "compute-text.json"), encoding="utf-8"))
TJ = V["tokenizer_json"]


def tj_variant(name):
    d = copy.deepcopy(TJ)
    if name in ("nopp", "dup", "dup!", "user"):
        d["post_processor"] = None
    if name in ("dup", "dup!"):
        d["added_tokens"].append({"id": 110, "content": "<|im_end|>" if name == "dup" else "!",
                                  "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True})
    if name == "user":  # an added token with special false (type 4)
        d["added_tokens"].append({"id": 110, "content": "zz", "single_word": False, "lstrip": False,
                                  "rstrip": False, "normalized": False, "special": False})
    return json.dumps(d, ensure_ascii=False).encode("utf-8")


TOKENIZERS = {k: tj_variant(k) for k in ("pp", "nopp", "dup", "dup!", "user")}
KEYS = {k: hf.keys_from_tokenizer_json(b) for k, b in TOKENIZERS.items()}

# the reason's opening 11.7b gives for each step (step 9: the key, given by each case)
PREFIX = {1: "a tokenizer_config.json of ", 2: "not a tokenizer_config.json: ",
          3: "not a tokenizer_config.json: not a JSON object", 4: "add_eos_token: ", 5: "add_bos_token: ",
          6: "chat_template: ", 7: "bos_token: ", 8: "eos_token: "}

T = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
     "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
T_EOS = "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def added_token(content, **kw):
    """An AddedToken as `transformers` saves it in tokenizer_config.json."""
    d = {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
         "rstrip": False, "single_word": False, "special": True}
    d.update(kw)
    return d


def J(obj):
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def R(s):
    return s.encode("utf-8")


def L(*entries):
    return [{"name": n, "template": t} for n, t in entries]


def padded(obj, size):
    """obj as JSON, spaces appended to exactly `size` bytes."""
    b = J(obj)
    return b + b" " * (size - len(b))


def many_keys(n, extra=None):
    """An object (under an ignored key) with n distinct short keys."""
    keys = ",".join('"k%06d":0' % i for i in range(n))
    return R('{"eos_token": "<|im_end|>", "x": {%s%s}}' % (keys, extra or ""))


def nested(levels):
    """A config whose ignored key `x` holds lists nested so that the deepest is at `levels`
    (the top-level object being level 1)."""
    return R('{"x": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}")


ADT = {"96": {"content": IM_START, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
              "special": True},
       "97": {"content": IM_END, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
              "special": True}}
B = {"bos_token": IM_START}  # what a config beside the post-processor's BOS must name (11.7b 7)


def JB(obj):
    """obj with bos_token <|im_start|> added, as JSON."""
    return J(dict(B, **obj))


# (case, tokenizer variant, config bytes, step 11.7b must refuse it at[, the reason's opening])
REFUSED = [
    # 1
    ("4,194,305 bytes (valid JSON, spaces)", "pp", padded(dict(B, eos_token=IM_END), 4_194_305), 1,
     "a tokenizer_config.json of 4194305 bytes, over the limit of 4194304"),
    ("order: over 4 MiB (1) and not JSON (2)", "pp", b"{" + b"x" * 4_194_304, 1),
    # 2
    ("not UTF-8 (0xFF in a string)", "pp", b'{"x": "\xff"}', 2),
    ("byte-order mark", "pp", b"\xef\xbb\xbf" + JB({"eos_token": IM_END}), 2),
    ("NaN in an ignored key", "pp", R('{"model_max_length": NaN}'), 2),
    ("Infinity in an ignored key", "pp", R('{"model_max_length": Infinity}'), 2),
    ("trailing comma", "pp", R('{"eos_token": "<|im_end|>",}'), 2),
    ("unpaired surrogate escape in an ignored key", "pp", R('{"x": "\\ud800"}'), 2),
    ("key twice: an ignored key (model_max_length)", "pp", R('{"model_max_length": 1, "model_max_length": 1}'), 2),
    ("key twice: eos_token", "pp", R('{"eos_token": "<|im_start|>", "eos_token": "<|im_end|>"}'), 2),
    ("key twice inside a chat_template entry", "pp",
     R('{"chat_template": [{"name": "default", "template": "a", "template": "b"}]}'), 2),
    ("key twice in added_tokens_decoder", "pp",
     R('{"added_tokens_decoder": {"96": {"content": "a"}, "96": {"content": "b"}}}'), 2),
    ("128 levels of nesting in an ignored key", "pp", nested(128), 2),
    ("262,145 keys in an object", "pp", many_keys(262_145), 2),
    ("order: 262,145th key a repeat (the count first)", "pp", many_keys(262_144, ',"k000000":0'), 2),
    ("order: add_eos_token true (4), then a JSON error at the end (2)", "pp", R('{"add_eos_token": true} x'), 2),
    ("order: top level a list (3) and a key twice inside (2)", "pp", R('[{"a": 1, "a": 1}]'), 2),
    ("empty file", "pp", b"", 2),
    # 3
    ("top level a list", "pp", R("[]"), 3),
    ("top level a string", "pp", R('"x"'), 3),
    ("top level null", "pp", R("null"), 3),
    ("top level a number", "pp", R("1"), 3),
    # 4
    ("add_eos_token true", "pp", J({"add_eos_token": True}), 4),
    ("add_eos_token \"false\"", "pp", J({"add_eos_token": "false"}), 4),
    ("add_eos_token 0", "pp", J({"add_eos_token": 0}), 4),
    ("order: add_eos_token true (4) and add_bos_token wrong (5)", "pp",
     J({"add_eos_token": True, "add_bos_token": False}), 4),
    ("order: eos_token bad (8), bos_token bad (7), add_eos_token true (4), key order reversed", "pp",
     J({"eos_token": 5, "bos_token": 5, "add_eos_token": True}), 4),
    # 5
    ("add_bos_token false, post-processor adds a BOS", "pp", JB({"add_bos_token": False}), 5),
    ("add_bos_token true, post-processor adds none", "nopp", J({"add_bos_token": True}), 5),
    ("add_bos_token \"true\"", "pp", JB({"add_bos_token": "true"}), 5),
    ("add_bos_token 1", "pp", JB({"add_bos_token": 1}), 5),
    ("order: add_bos_token wrong (5) and chat_template 5 (6)", "pp",
     J({"add_bos_token": False, "chat_template": 5}), 5),
    # 6
    ("chat_template a number", "pp", J({"chat_template": 5}), 6),
    ("chat_template true", "pp", J({"chat_template": True}), 6),
    ("chat_template an object {default: ...}", "pp", J({"chat_template": {"default": T}}), 6),
    ("chat_template [] (no default)", "pp", J({"chat_template": []}), 6),
    ("chat_template list without default", "pp", J({"chat_template": L(("tool_use", T), ("rag", T))}), 6),
    ("chat_template list of one entry not named default", "pp", J({"chat_template": L(("chatml", T))}), 6),
    ("chat_template list: Default only (case-sensitive)", "nopp", J({"chat_template": L(("Default", T))}), 6),
    ("chat_template list: default twice", "pp", J({"chat_template": L(("default", "a"), ("default", "b"))}), 6),
    ("chat_template list: another name twice", "pp",
     J({"chat_template": L(("default", "a"), ("x", "b"), ("x", "c"))}), 6),
    ("chat_template list: an entry a string", "pp", J({"chat_template": [T]}), 6),
    ("chat_template list: entry without name", "pp",
     J({"chat_template": [{"template": "a"}, {"name": "default", "template": T}]}), 6),
    ("chat_template list: name an integer", "pp",
     J({"chat_template": [{"name": 1, "template": "a"}, {"name": "default", "template": T}]}), 6),
    ("chat_template list: template null", "pp", J({"chat_template": [{"name": "default", "template": None}]}), 6),
    ("chat_template list: malformed entry after default", "pp",
     J({"chat_template": [{"name": "default", "template": T}, {"name": "x"}]}), 6),
    ("chat_template list: name null", "pp", J({"chat_template": [{"name": None, "template": "a"},
                                                                 {"name": "default", "template": T}]}), 6),
    ("order: chat_template bad (6) and bos_token bad (7)", "pp", J({"chat_template": 5, "bos_token": "<bos>"}), 6),
    # 7
    ("bos_token an integer (96)", "pp", J({"bos_token": 96}), 7),
    ("bos_token true", "pp", J({"bos_token": True}), 7),
    ("bos_token a list", "pp", J({"bos_token": [IM_START]}), 7),
    ("bos_token an object without content", "pp", J({"bos_token": {"__type": "AddedToken"}}), 7),
    ("bos_token an object whose content is 96", "pp", J({"bos_token": {"content": 96}}), 7),
    ("bos_token an object whose content is null", "pp", J({"bos_token": {"content": None}}), 7),
    ("bos_token not a token (<s>)", "nopp", J({"bos_token": "<s>"}), 7,
     'bos_token: "<s>" is not a token of the tokenizer'),
    ("bos_token \"\" (not a token)", "nopp", J({"bos_token": ""}), 7, 'bos_token: "" is not a token'),
    ("bos_token ' the' (raw text; the token is 'Ġthe')", "nopp", J({"bos_token": " the"}), 7,
     'bos_token: " the" is not a token'),
    ("bos_token <|im_end|> (97), post-processor adds 96", "pp", J({"bos_token": IM_END}), 7),
    ("bos_token AddedToken <|im_end|>, post-processor adds 96", "pp", J({"bos_token": added_token(IM_END)}), 7),
    ("bos_token <|im_end|>, more than one token (97, 110)", "dup", J({"bos_token": IM_END}), 7,
     'bos_token: "<|im_end|>" is the string of more than one token id'),
    ("order: bos_token '!', more than one token (0 type 1, 110 type 3) before 'not special'", "dup!",
     J({"bos_token": "!"}), 7, 'bos_token: "!" is the string of more than one token id'),
    ("bos_token an ordinary token ('!', 0), no post-processor BOS", "nopp", J({"bos_token": "!"}), 7,
     'bos_token: "!" is not a special token'),
    ("bos_token an ordinary token ('the', 100)", "nopp", J({"bos_token": "the"}), 7,
     'bos_token: "the" is not a special token'),
    ("bos_token an added token with special false ('zz', 110)", "user", J({"bos_token": "zz"}), 7,
     'bos_token: "zz" is not a special token'),
    ("bos_token absent, post-processor adds a BOS", "pp", J({"eos_token": IM_END, "chat_template": T}), 7,
     "bos_token: absent, "),
    ("bos_token absent: {}, post-processor adds a BOS", "pp", J({}), 7, "bos_token: absent, "),
    ("bos_token null, post-processor adds a BOS", "pp", J({"bos_token": None, "chat_template": T}), 7,
     "bos_token: absent, "),
    ("order: bos_token absent (7) and eos_token bad (8)", "pp", J({"eos_token": "</s>"}), 7, "bos_token: absent, "),
    ("order: bos_token bad (7) and eos_token bad (8)", "pp", J({"bos_token": "<s>", "eos_token": "</s>"}), 7),
    ("order: bos_token not special (7) and unk_token bad (9)", "nopp", J({"bos_token": "the", "unk_token": 5}), 7),
    # 8
    ("eos_token an integer (97)", "pp", JB({"eos_token": 97}), 8),
    ("eos_token an object without content", "pp", JB({"eos_token": {"id": 97}}), 8),
    ("eos_token not a token (</s>)", "pp", JB({"eos_token": "</s>"}), 8,
     'eos_token: "</s>" is not a token of the tokenizer'),
    ("eos_token <|im_end|>, more than one token (97, 110)", "dup", J({"eos_token": added_token(IM_END)}), 8,
     'eos_token: "<|im_end|>" is the string of more than one token id'),
    ("eos_token ' the' (raw text)", "pp", JB({"eos_token": " the"}), 8),
    ("eos_token an ordinary token in byte-level form ('Ġthe', 101)", "nopp",
     J({"eos_token": "\u0120the", "chat_template": T_EOS}), 8, 'eos_token: "\u0120the" is not a special token'),
    ("eos_token an ordinary token ('the', 100)", "nopp", J({"eos_token": "the"}), 8,
     'eos_token: "the" is not a special token'),
    ("eos_token an added token with special false ('zz', 110)", "user", J({"eos_token": added_token("zz")}), 8,
     'eos_token: "zz" is not a special token'),
    ("order: eos_token not special (8) and split_special_tokens true (9)", "nopp",
     J({"split_special_tokens": True, "eos_token": "the"}), 8),
    # 9: split_special_tokens
    ("split_special_tokens true", "nopp", J({"split_special_tokens": True}), 9, "split_special_tokens"),
    ("split_special_tokens \"no\"", "nopp", J({"split_special_tokens": "no"}), 9, "split_special_tokens"),
    ("split_special_tokens 0", "nopp", J({"split_special_tokens": 0}), 9, "split_special_tokens"),
    ("order: split_special_tokens (first of 9) and unk_token bad", "nopp",
     J({"unk_token": "ZZ", "split_special_tokens": True}), 9, "split_special_tokens"),
    # 9: unk, pad, sep, cls, mask
    ("unk_token 'ZZ' (not a token)", "nopp", J({"unk_token": "ZZ"}), 9, 'unk_token: "ZZ" is not a token'),
    ("unk_token an object without content", "nopp", J({"unk_token": {"x": []}}), 9, "unk_token"),
    ("pad_token 5", "nopp", J({"pad_token": 5}), 9, "pad_token"),
    ("pad_token '<pad>' (not a token)", "nopp", J({"pad_token": "<pad>"}), 9, 'pad_token: "<pad>" is not a token'),
    ("pad_token an ordinary token ('!')", "nopp", J({"pad_token": added_token("!")}), 9,
     'pad_token: "!" is not a special token'),
    ("sep_token an ordinary token ('the')", "nopp", J({"sep_token": "the"}), 9, 'sep_token: "the" is not a special'),
    ("cls_token an added token with special false ('zz')", "user", J({"cls_token": "zz"}), 9,
     'cls_token: "zz" is not a special'),
    ("mask_token more than one token (<|im_end|>: 97, 110)", "dup", J({"mask_token": IM_END}), 9,
     'mask_token: "<|im_end|>" is the string of more than one'),
    ("mask_token \"\"", "nopp", J({"mask_token": ""}), 9, "mask_token"),
    ("order: mask_token bad, then unk_token bad in the file (unk first)", "nopp",
     J({"mask_token": "ZZ", "unk_token": "YY"}), 9, "unk_token"),
    ("order: cls_token bad and pad_token bad (pad first)", "nopp",
     J({"cls_token": "ZZ", "pad_token": 1.5}), 9, "pad_token"),
    ("order: mask_token bad (before additional_special_tokens)", "nopp",
     J({"additional_special_tokens": ["ZZ"], "mask_token": "ZZ"}), 9, "mask_token"),
    # 9: additional_special_tokens
    ("additional_special_tokens a string", "nopp", J({"additional_special_tokens": IM_END}), 9,
     "additional_special_tokens"),
    ("additional_special_tokens an object", "nopp", J({"additional_special_tokens": {"content": IM_END}}), 9,
     "additional_special_tokens"),
    ("additional_special_tokens [7]", "nopp", J({"additional_special_tokens": [7]}), 9, "additional_special_tokens"),
    ("additional_special_tokens [null]", "nopp", J({"additional_special_tokens": [None]}), 9,
     "additional_special_tokens"),
    ("additional_special_tokens ['the'] (an ordinary token)", "nopp", J({"additional_special_tokens": ["the"]}), 9,
     "additional_special_tokens"),
    ("additional_special_tokens [<|im_start|>, 'ZZ']", "nopp",
     J({"additional_special_tokens": [IM_START, added_token("ZZ")]}), 9, "additional_special_tokens"),
    ("order: additional_special_tokens (before added_tokens_decoder)", "nopp",
     J({"added_tokens_decoder": [], "additional_special_tokens": ["ZZ"]}), 9, "additional_special_tokens"),
    # 9: added_tokens_decoder
    ("added_tokens_decoder a list", "nopp", J({"added_tokens_decoder": []}), 9, "added_tokens_decoder"),
    # `transformers` turns an ordinary token the decoder names into an added token (it changes
    # how " the" encodes): only added tokens (types 3, 4) may be named.
    ("added_tokens_decoder ordinary tokens: '0' ('!', special false), '100' ('the', special absent)", "nopp",
     J({"added_tokens_decoder": {"0": {"content": "!", "special": False}, "100": {"content": "the"}}}),
     9, "added_tokens_decoder"),
    ("added_tokens_decoder true", "nopp", J({"added_tokens_decoder": True}), 9, "added_tokens_decoder"),
    ("added_tokens_decoder adds 'zz' as id 110 (not below 110 tokens)", "nopp",
     J({"added_tokens_decoder": {"110": dict(ADT["96"], content="zz")}}), 9, "added_tokens_decoder"),
    ("added_tokens_decoder key '096' (leading zero)", "nopp", J({"added_tokens_decoder": {"096": ADT["96"]}}), 9,
     "added_tokens_decoder"),
    ("added_tokens_decoder key '-1'", "nopp", J({"added_tokens_decoder": {"-1": ADT["96"]}}), 9,
     "added_tokens_decoder"),
    ("added_tokens_decoder key ' 96'", "nopp", J({"added_tokens_decoder": {" 96": ADT["96"]}}), 9,
     "added_tokens_decoder"),
    ("added_tokens_decoder key '9\u0666' (an Arabic-Indic digit)", "nopp",
     J({"added_tokens_decoder": {"9\u0666": ADT["96"]}}), 9, "added_tokens_decoder"),
    ("added_tokens_decoder key 'im_start'", "nopp", J({"added_tokens_decoder": {"im_start": ADT["96"]}}), 9,
     "added_tokens_decoder"),
    ("added_tokens_decoder 96's content 'nonsense'", "nopp",
     J({"added_tokens_decoder": {"96": {"content": "nonsense", "special": True}}}), 9, "added_tokens_decoder"),
    ("added_tokens_decoder 96 without content", "nopp", J({"added_tokens_decoder": {"96": {"special": True}}}), 9,
     "added_tokens_decoder"),
    ("added_tokens_decoder 96 a string", "nopp", J({"added_tokens_decoder": {"96": IM_START}}), 9,
     "added_tokens_decoder"),
    ("added_tokens_decoder 96 special false", "nopp",
     J({"added_tokens_decoder": {"96": dict(ADT["96"], special=False)}}), 9, "added_tokens_decoder"),
    ("added_tokens_decoder 96 special absent (false)", "nopp",
     J({"added_tokens_decoder": {"96": {"content": IM_START}}}), 9, "added_tokens_decoder"),
    ("added_tokens_decoder 96 special null (ASSUMED: not absent)", "nopp",
     J({"added_tokens_decoder": {"96": {"content": IM_START, "special": None}}}), 9, "added_tokens_decoder"),
    ("added_tokens_decoder 96 special 1", "nopp",
     J({"added_tokens_decoder": {"96": {"content": IM_START, "special": 1}}}), 9, "added_tokens_decoder"),
    ("added_tokens_decoder re-marks 'the' (100) special", "nopp",
     J({"added_tokens_decoder": {"100": {"content": "the", "special": True}}}), 9, "added_tokens_decoder"),
    ("added_tokens_decoder re-marks 'zz' (110, special false) special", "user",
     J({"added_tokens_decoder": {"110": {"content": "zz", "special": True}}}), 9, "added_tokens_decoder"),
    ("order: added_tokens_decoder by byte order: '100' bad before '97' bad", "nopp",
     J({"added_tokens_decoder": {"97": {"content": "x"}, "100": {"content": "y"}}}), 9,
     "added_tokens_decoder: 100"),
    ("order: added_tokens_decoder '96' ok, '97' bad, key order reversed", "nopp",
     J({"added_tokens_decoder": {"97": {"content": "x"}, "96": ADT["96"]}}), 9, "added_tokens_decoder: 97"),
]

DEFAULT_LAST = [{"name": "tool_use", "template": "tools"}, {"name": "rag", "template": "rag"},
                {"name": "default", "template": T, "description": "x", "extra": [1, {"y": None}]}]
IGNORED = {
    "model_max_length": 1000000000000000019884624838656, "tokenizer_class": "LlamaTokenizer",
    "clean_up_tokenization_spaces": "junk", "legacy": None, "x": 1.5e300, "add_prefix_space": True,
    "padding_side": 5, "truncation_side": [], "errors": {"x": 1}, "extra_special_tokens": {"a": "ZZ"},
}
# the shape transformers 4 saves a SmolLM2-style tokenizer_config.json in
SMOL = {"add_bos_token": True, "add_eos_token": False, "add_prefix_space": False, "added_tokens_decoder": ADT,
        "additional_special_tokens": [IM_START, IM_END], "bos_token": IM_START, "chat_template": T,
        "clean_up_tokenization_spaces": False, "eos_token": IM_END, "extra_special_tokens": {},
        "model_max_length": 8192, "pad_token": IM_END, "tokenizer_class": "GPT2Tokenizer",
        "unk_token": IM_END, "vocab_size": 49152}

# (case, tokenizer variant, config bytes, (chat_template, bos id, eos id))
ACCEPTED = [
    ("{} (no BOS anywhere)", "nopp", J({}), (None, None, None)),
    ("SmolLM2-style: AddedTokens, add_bos_token true, string template", "pp",
     J({"add_bos_token": True, "add_eos_token": False, "bos_token": added_token(IM_START),
        "eos_token": added_token(IM_END), "chat_template": T, "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer", "clean_up_tokenization_spaces": False}), (T, 96, 97)),
    ("SmolLM2-style as transformers 4 saves it (step-9 keys)", "pp", J(SMOL), (T, 96, 97)),
    ("the same, no post-processor BOS, add_bos_token false", "nopp", J(dict(SMOL, add_bos_token=False)),
     (T, 96, 97)),
    ("strings, no post-processor BOS: BOS for the template only", "nopp",
     J({"bos_token": IM_START, "eos_token": IM_END, "chat_template": T}), (T, 96, 97)),
    ("add_bos_token false, no post-processor BOS", "nopp", J({"add_bos_token": False}), (None, None, None)),
    ("add_bos_token null, post-processor BOS", "pp", JB({"add_bos_token": None}), (None, 96, None)),
    ("add_bos_token null, no post-processor BOS", "nopp", J({"add_bos_token": None}), (None, None, None)),
    ("add_bos_token true, post-processor BOS", "pp", JB({"add_bos_token": True}), (None, 96, None)),
    ("add_eos_token null", "pp", JB({"add_eos_token": None}), (None, 96, None)),
    ("add_eos_token false", "pp", JB({"add_eos_token": False, "eos_token": IM_END}), (None, 96, 97)),
    ("bos_token only, post-processor BOS", "pp", J({"bos_token": IM_START}), (None, 96, None)),
    ("bos_token null, no post-processor BOS", "nopp", J({"bos_token": None, "chat_template": T}), (T, None, None)),
    ("bos_token an object with only content", "pp", J({"bos_token": {"content": IM_START}}), (None, 96, None)),
    ("bos_token AddedToken, other keys odd (not read)", "pp",
     J({"bos_token": {"content": IM_START, "lstrip": "x", "special": 5, "__type": "Other"}}), (None, 96, None)),
    ("bos_token AddedToken with special false (not read)", "pp",
     J({"bos_token": added_token(IM_START, special=False)}), (None, 96, None)),
    ("eos_token = bos_token", "nopp", J({"bos_token": IM_END, "eos_token": IM_END}), (None, 97, 97)),
    ("eos_token <|im_start|> (special, not the usual end)", "pp", JB({"eos_token": IM_START}), (None, 96, 96)),
    ("eos_token null", "pp", JB({"eos_token": None}), (None, 96, None)),
    ("chat_template null", "pp", JB({"chat_template": None}), (None, 96, None)),
    ("chat_template \"\"", "pp", JB({"chat_template": ""}), ("", 96, None)),
    ("chat_template list, default first", "pp", JB({"chat_template": L(("default", T), ("tool_use", "t"))}),
     (T, 96, None)),
    ("chat_template list, default last, other keys in entries", "pp", JB({"chat_template": DEFAULT_LAST}),
     (T, 96, None)),
    ("chat_template list, only default", "pp", JB({"chat_template": L(("default", T))}), (T, 96, None)),
    ("chat_template list, names differing in case (Default, default)", "pp",
     JB({"chat_template": L(("Default", "D"), ("default", T))}), (T, 96, None)),
    # 11.8: the chat's BOS (no second one when the rendered text starts with the BOS's string)
    ("template writing no bos_token, starting with <|im_start|> (no BOS added)", "pp",
     JB({"chat_template": T[len("{{ bos_token }}"):]}), (T[len("{{ bos_token }}"):], 96, None)),
    ("template writing no bos_token, starting with content (BOS added)", "pp",
     JB({"chat_template": T_EOS, "eos_token": IM_END}), (T_EOS, 96, 97)),
    ("unknown and ignored keys of any value", "pp", JB(dict(IGNORED, eos_token=IM_END)), (None, 96, 97)),
    ("127 levels of nesting in an ignored key", "nopp", nested(127), (None, None, None)),
    ("262,144 keys in an object", "nopp", many_keys(262_144), (None, None, 97)),
    ("exactly 4,194,304 bytes", "pp", padded(dict(B, eos_token=IM_END), 4_194_304), (None, 96, 97)),
    # 9, accepted
    ("split_special_tokens false", "nopp", J({"split_special_tokens": False}), (None, None, None)),
    ("split_special_tokens null", "nopp", J({"split_special_tokens": None}), (None, None, None)),
    ("unk/pad/sep/cls/mask naming special tokens (strings, AddedTokens, null)", "nopp",
     J({"unk_token": IM_END, "pad_token": added_token(IM_END), "sep_token": IM_START, "cls_token": None,
        "mask_token": {"content": IM_START}}), (None, None, None)),
    ("additional_special_tokens null", "nopp", J({"additional_special_tokens": None}), (None, None, None)),
    ("additional_special_tokens []", "nopp", J({"additional_special_tokens": []}), (None, None, None)),
    ("additional_special_tokens [<|im_start|>, AddedToken <|im_end|>, <|im_start|>]", "nopp",
     J({"additional_special_tokens": [IM_START, added_token(IM_END), IM_START]}), (None, None, None)),
    ("added_tokens_decoder null", "nopp", J({"added_tokens_decoder": None}), (None, None, None)),
    ("added_tokens_decoder {}", "nopp", J({"added_tokens_decoder": {}}), (None, None, None)),
    ("added_tokens_decoder 96, 97 as saved", "nopp", J({"added_tokens_decoder": ADT}), (None, None, None)),
    ("added_tokens_decoder 110 'zz' special false (type 4)", "user",
     J({"added_tokens_decoder": {"110": {"content": "zz", "special": False, "lstrip": True}}}), (None, None, None)),
    ("a config naming 'zz' nowhere, beside a type-4 token", "user", J({"eos_token": IM_END}), (None, None, 97)),
    ("ignored: tokenizer_class GPT2Tokenizer", "nopp", J({"tokenizer_class": "GPT2Tokenizer"}), (None, None, None)),
    ("ignored: tokenizer_class Qwen2Tokenizer", "nopp", J({"tokenizer_class": "Qwen2Tokenizer"}), (None, None, None)),
    ("ignored: tokenizer_class PreTrainedTokenizerFast", "pp",
     J({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": IM_START}), (None, 96, None)),
    ("a 5000-digit number in an ignored key", "pp",
     R('{"x": ' + "9" * 5000 + ', "eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}'), (None, 96, 97)),
    ("whitespace around the document, escapes in keys", "pp",
     R(' \n{"eos_\\u0074oken" : "<|im_end|>" , "bos_token":"<|im_start|>"}\t\r\n'), (None, 96, 97)),
]

# ---------- 11.7c: a chat_template.jinja beside the config ----------
CFG = JB({"eos_token": IM_END})  # a config 11.7b accepts, without chat_template
SMOL_NO_T = {k: v for k, v in SMOL.items() if k != "chat_template"}  # as transformers >= 4.47 saves it
RAISES = "{{ raise_exception('the config template') }}"
T_MIXED = ("{{ bos_token }}\r\r\n{% for m in messages %}<|im_start|>{{ m.role }}\n\r{{ m.content }}<|im_end|>"
           "\r\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\r{% endif %}\r")
T_MIXED_LF = ("{{ bos_token }}\n\n{% for m in messages %}<|im_start|>{{ m.role }}\n\n{{ m.content }}<|im_end|>"
              "\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}\n")
T_WIDE = T.replace("\n{{ m.content }}", "\n\u00e9\U0010ffff {{ m.content }}")  # 2- and 4-byte characters
COMMENT_4MIB = R(T) + b"{#" + b"x" * (4_194_304 - len(R(T)) - 4) + b"#}"  # exactly 4 MiB, renders as T


def crlf(t):
    return t.replace("\n", "\r\n")


# (case, tokenizer variant, config bytes, file bytes, (field, 11.7b step, 11.7c step or None), reason's opening)
FILE_REFUSED = [
    ("file of 4,194,305 bytes (T and a comment)", "pp", CFG, COMMENT_4MIB + b" ", ("chat_template", 6, 1),
     "a chat_template.jinja of 4194305 bytes, over the limit of 4194304"),
    ("file of 4 MiB of CR LF plus one byte (the limit is on the bytes)", "pp", CFG, b"\r\n" * 2_097_152 + b"x",
     ("chat_template", 6, 1), "a chat_template.jinja of 4194305 bytes"),
    ("order: file over 4 MiB (1) and not UTF-8 (2)", "pp", CFG, b"\xff" * 4_194_305, ("chat_template", 6, 1),
     "a chat_template.jinja of "),
    ("a lone 0xFF byte", "pp", CFG, b"\xff", ("chat_template", 6, 2), "not UTF-8: "),
    ("T then a lone 0xFF byte", "pp", CFG, R(T) + b"\xff", ("chat_template", 6, 2), "not UTF-8: "),
    ("overlong '/' (C0 AF)", "pp", CFG, b"{{ 'a\xc0\xafb' }}", ("chat_template", 6, 2), "not UTF-8: "),
    ("overlong '/' in 3 bytes (E0 80 AF)", "pp", CFG, b"\xe0\x80\xaf", ("chat_template", 6, 2), "not UTF-8: "),
    ("encoded surrogate U+D800 (ED A0 80)", "pp", CFG, b"a\xed\xa0\x80", ("chat_template", 6, 2), "not UTF-8: "),
    ("encoded surrogate pair (ED A0 BD ED B8 80, CESU-8)", "pp", CFG, b"\xed\xa0\xbd\xed\xb8\x80",
     ("chat_template", 6, 2), "not UTF-8: "),
    ("past U+10FFFF (F4 90 80 80)", "pp", CFG, b"\xf4\x90\x80\x80", ("chat_template", 6, 2), "not UTF-8: "),
    ("truncated at the end (E2 82)", "pp", CFG, R(T) + b"\xe2\x82", ("chat_template", 6, 2), "not UTF-8: "),
    ("UTF-16 LE with its BOM", "pp", CFG, b"\xff\xfe" + T.encode("utf-16-le"), ("chat_template", 6, 2), "not UTF-8: "),
    # which blob is refused first: the file's refusals come at 11.7b's step 6
    ("order: config over 4 MiB (1), file over 4 MiB", "pp", padded(dict(B), 4_194_305), COMMENT_4MIB + b" ",
     ("tokenizer_config", 1, None), "a tokenizer_config.json of "),
    ("order: config's chat_template key twice (2), file fine", "pp",
     R('{"bos_token": "<|im_start|>", "chat_template": "a", "chat_template": "b"}'), R(T),
     ("tokenizer_config", 2, None), "not a tokenizer_config.json: "),
    ("order: config a list (3), file not UTF-8", "pp", R("[]"), b"\xff", ("tokenizer_config", 3, None),
     "not a tokenizer_config.json: not a JSON object"),
    ("order: config's add_eos_token true (4), file not UTF-8", "pp", JB({"add_eos_token": True}), b"\xff",
     ("tokenizer_config", 4, None), "add_eos_token: "),
    ("order: config's add_bos_token false (5), file over 4 MiB", "pp", JB({"add_bos_token": False}),
     COMMENT_4MIB + b" ", ("tokenizer_config", 5, None), "add_bos_token: "),
    ("order: file not UTF-8 (6), config's bos_token bad (7)", "pp", J({"bos_token": "<s>"}), b"\xff",
     ("chat_template", 6, 2), "not UTF-8: "),
    ("order: file not UTF-8 (6), config's bos_token absent (7)", "pp", J({}), b"\xff",
     ("chat_template", 6, 2), "not UTF-8: "),
    ("order: file fine, config's bos_token absent (7)", "pp", J({"eos_token": IM_END}), R(T),
     ("tokenizer_config", 7, None), "bos_token: absent, "),
    ("order: file fine, config's eos_token bad (8)", "pp", JB({"eos_token": "</s>"}), R(T),
     ("tokenizer_config", 8, None), "eos_token: "),
    ("order: file fine, config's split_special_tokens true (9)", "nopp", J({"split_special_tokens": True}), R(T),
     ("tokenizer_config", 9, None), "split_special_tokens"),
]

# (case, tokenizer variant, config bytes, file bytes, (chat_template, bos id, eos id))
FILE_ACCEPTED = [
    ("CR LF, beside a config without chat_template (as saved)", "pp", J(SMOL_NO_T), R(crlf(T)), (T, 96, 97)),
    ("lone CR", "pp", CFG, R(T.replace("\n", "\r")), (T, 96, 97)),
    ("CR CR LF, LF CR, a CR at the end", "pp", CFG, R(T_MIXED), (T_MIXED_LF, 96, 97)),
    ("LF only (unchanged)", "pp", CFG, R(T), (T, 96, 97)),
    ("a leading BOM (kept)", "pp", CFG, b"\xef\xbb\xbf" + R(T), ("\ufeff" + T, 96, 97)),
    ("a BOM, CR LF, config's chat_template 7", "pp", JB({"eos_token": IM_END, "chat_template": 7}),
     b"\xef\xbb\xbf" + R(crlf(T)), ("\ufeff" + T, 96, 97)),
    ("a BOM in the middle (kept)", "pp", CFG, R(T.replace("<|im_start|>assistant", "\ufeff<|im_start|>assistant")),
     (T.replace("<|im_start|>assistant", "\ufeff<|im_start|>assistant"), 96, 97)),
    ("empty file (an empty template)", "pp", CFG, b"", ("", 96, 97)),
    ("empty file, config's chat_template a string", "pp", JB({"chat_template": T}), b"", ("", 96, None)),
    ("2- and 4-byte characters (U+00E9, U+10FFFF)", "pp", CFG, R(T_WIDE), (T_WIDE, 96, 97)),
    ("exactly 4,194,304 bytes (T and a comment)", "pp", CFG, COMMENT_4MIB,
     (COMMENT_4MIB.decode("utf-8"), 96, 97)),
    ("config's chat_template a string (the file wins)", "pp", JB({"eos_token": IM_END, "chat_template": "{{ 'x' }}"}),
     R(T), (T, 96, 97)),
    ("config's chat_template a template that raises", "pp", JB({"eos_token": IM_END, "chat_template": RAISES}),
     R(crlf(T)), (T, 96, 97)),
    ("config's chat_template 7", "pp", JB({"chat_template": 7}), R(T), (T, 96, None)),
    ("config's chat_template true", "pp", JB({"chat_template": True}), R(T), (T, 96, None)),
    ("config's chat_template a list without default", "pp",
     JB({"chat_template": L(("tool_use", "t"), ("rag", "r"))}), R(T), (T, 96, None)),
    ("config's chat_template a list with default (not read)", "pp",
     JB({"chat_template": L(("default", "{{ 'config' }}"))}), R(T), (T, 96, None)),
    ("config's chat_template a malformed list", "pp", JB({"chat_template": [1, {"name": 2}]}), R(T), (T, 96, None)),
    ("config's chat_template null", "pp", JB({"chat_template": None}), R(T), (T, 96, None)),
    ("config's chat_template absent, no post-processor BOS", "nopp", J({"eos_token": IM_END}), R(crlf(T)),
     (T, None, 97)),
    ("config {} beside a file, no post-processor BOS", "nopp", J({}), R(T_EOS), (T_EOS, None, None)),
]


def run_port(variant, blob, chat_template=None):
    return hc.read_keys(KEYS[variant], blob, chat_template)


def short(v, n=40):
    s = repr(v)
    return s if len(s) <= n else s[:n] + "..."


# ---------- transformers, in another interpreter ----------
TF_HELPER = r'''
import json, os, sys, tempfile, warnings, logging
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from transformers import AutoTokenizer, PreTrainedTokenizerFast
import transformers
cases = json.load(open(sys.argv[1]))
out = {"version": transformers.__version__, "cases": []}
msgs = [{"role": "user", "content": "the other"}]
base = os.path.join(tempfile.gettempdir(), "0_%d" % os.getpid())  # transformers 4 guesses a model type
for j, c in enumerate(cases):                                       # from the path: digits only
    d = os.path.join(base, "%04d" % j)
    os.makedirs(d)
    open(os.path.join(d, "tokenizer.json"), "wb").write(bytes.fromhex(c["tj"]))
    open(os.path.join(d, "tokenizer_config.json"), "wb").write(bytes.fromhex(c["cfg"]))
    if c.get("ct") is not None:  # 11.7c: the file beside the config
        open(os.path.join(d, "chat_template.jinja"), "wb").write(bytes.fromhex(c["ct"]))
    r = {}
    try:
        try:
            t = AutoTokenizer.from_pretrained(d)
        except ValueError as e:  # transformers 4 wants a config.json (model_type) without tokenizer_class
            if "model_type" not in str(e):
                raise
            t = PreTrainedTokenizerFast.from_pretrained(d)
    except BaseException as e:
        r["load"] = "%s: %s" % (type(e).__name__, str(e)[:100])
        out["cases"].append(r); continue
    r["class"] = type(t).__name__
    r["bos"], r["eos"], r["len"] = t.bos_token_id, t.eos_token_id, len(t)
    r["template"] = t.chat_template
    r["plain"] = t(c["plain"])["input_ids"]
    try:
        r["render"] = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = t.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        r["chat"] = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    except BaseException as e:
        r["render_error"] = "%s: %s" % (type(e).__name__, str(e)[:80])
    out["cases"].append(r)
print(json.dumps(out))
'''

PLAIN = "the other the <|im_end|> 20 ZZ<pad>zz"


def spec_values(variant, want):
    """11.7b's values, then 11.7 / 11.8: (plain prompt ids, chat rendered, chat ids) by the spec."""
    import text
    tpl, bos, eos = want
    keys = hc.apply(KEYS[variant], tpl, bos, eos)
    tok = text.Tokenizer(keys)
    plain = tok.encode(PLAIN)
    rendered = chat = None
    if tpl is not None:
        try:
            import jinja2
            env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
            tokens = keys["tokenizer.ggml.tokens"]
            rendered = env.from_string(tpl).render(
                messages=[{"role": "user", "content": "the other"}], add_generation_prompt=True,
                bos_token=tokens[bos] if bos is not None else "", eos_token=tokens[eos] if eos is not None else "")
            chat = tok.encode_chat(rendered)  # 11.8: no second BOS
        except ImportError:
            pass
    return plain, rendered, chat


def tf_notes(variant, want, r):
    """Where transformers' reading r differs from 11.7b/11.7/11.8's values."""
    plain, rendered, chat = spec_values(variant, want)
    notes = []
    if r["bos"] != want[1]:
        notes.append("bos_token_id %s (11.7b %s)" % (r["bos"], want[1]))
    if r["eos"] != want[2]:
        notes.append("eos_token_id %s (11.7b %s)" % (r["eos"], want[2]))
    if r["len"] != len(KEYS[variant]["tokenizer.ggml.tokens"]):
        notes.append("%d tokens (11.7a %d)" % (r["len"], len(KEYS[variant]["tokenizer.ggml.tokens"])))
    if r["plain"] != plain:
        notes.append("plain %r: %s (11.7 %s)" % (PLAIN, r["plain"], plain))
    if want[0] is None:
        if "render_error" not in r:
            notes.append("renders a chat (11.7b: no template)")
    elif "render_error" in r:
        notes.append("chat fails: %s" % r["render_error"])
    else:
        if rendered is not None and r["render"] != rendered:
            notes.append("renders %s (spec %s)" % (short(r["render"]), short(rendered)))
        if chat is not None and r["chat"] != chat:
            notes.append("chat ids %s (11.7+11.8 %s)" % (r["chat"], chat))
    return notes


def compare_transformers(python, rows, file_rows=(), file_refused=()):
    """rows: [(name, variant, blob, want)] accepted by the port; file_rows: [(name, variant, blob,
    file, want)] accepted by the port with a chat_template.jinja (11.7c); file_refused: [(name,
    variant, blob, file)] whose file the port refuses (and nothing else)."""
    cases = [{"tj": TOKENIZERS[v].hex(), "cfg": b.hex(), "plain": PLAIN} for _, v, b, _ in rows]
    cases += [{"tj": TOKENIZERS[v].hex(), "cfg": b.hex(), "ct": f.hex(), "plain": PLAIN}
              for _, v, b, f, _ in list(file_rows) + [c + (None,) for c in file_refused]]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases, f)
    res = subprocess.run([python, "-c", TF_HELPER, f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if res.returncode != 0:
        print("transformers helper failed:\n" + res.stderr[-2000:])
        return
    out = json.loads(res.stdout.strip().splitlines()[-1])
    results = out["cases"]
    print("\ntransformers %s (AutoTokenizer.from_pretrained) on the accepted pairs; '=' agrees with 11.7b/11.7/11.8"
          % out["version"])
    n_diff = 0
    for (name, variant, blob, want), r in zip(rows, results):
        if "load" in r:
            print("  DIFF %-60s transformers refuses to load: %s" % (name, r["load"]))
            n_diff += 1
            continue
        notes = tf_notes(variant, want, r)
        n_diff += bool(notes)
        print("  %-4s %-60s [%s] %s" % ("DIFF" if notes else "=", name, r["class"], "; ".join(notes)))
    print("  %d of %d accepted pairs read differently by transformers" % (n_diff, len(rows)))
    if not file_rows and not file_refused:
        return
    results = results[len(rows):]
    print("\ntransformers %s with a chat_template.jinja beside the config (11.7c); '=' agrees with "
          "11.7c/11.7b/11.7/11.8, the template compared as transformers holds it" % out["version"])
    n_diff = 0
    for (name, variant, blob, ct, want), r in zip(file_rows, results):
        if "load" in r:
            print("  DIFF %-60s transformers refuses to load: %s" % (name, r["load"]))
            n_diff += 1
            continue
        notes = []
        # transformers holds the template with LF line ends (it reads the file as text); 11.7c
        # keeps the file's text and 11.8 makes its line ends LF before compiling it.
        if r["template"] != hc.lf_line_ends(want[0]):
            notes.append("template %s (11.7c, 11.8: %s)" % (short(r["template"]),
                                                             short(hc.lf_line_ends(want[0]))))
        notes += tf_notes(variant, want, r)
        n_diff += bool(notes)
        print("  %-4s %-60s [%s] %s" % ("DIFF" if notes else "=", name, r["class"], "; ".join(notes)))
    print("  %d of %d accepted files read differently by transformers" % (n_diff, len(file_rows)))
    print("  files 11.7c refuses (invalid blob chat_template), config otherwise accepted:")
    for (name, variant, blob, ct), r in zip(file_refused, results[len(file_rows):]):
        if "load" in r:
            what = "refuses to load: " + r["load"]
        else:
            t = r["template"]
            what = "loads it: template of %s characters%s" % (
                len(t) if isinstance(t, str) else "?",
                "; chat fails: " + r["render_error"][:60] if "render_error" in r else "; renders a chat")
        print("  info %-60s transformers %s" % (name, what))


def main():
    ok, n_ok, n = True, 0, 0
    print("refused by 11.7b (hf_tokenizer_config.py): [step] reason")
    for case in REFUSED:
        name, variant, blob, step = case[:4]
        prefix = case[4] if len(case) > 4 else PREFIX[step]
        n += 1
        try:
            got = run_port(variant, blob)
            res, good = "ACCEPTED %s (11.7b refuses it at %d)" % (short(got), step), False
        except hc.Refused as e:
            good = e.step == step and str(e).startswith(prefix)
            res = "[%d] %s" % (e.step, str(e)[:110])
            if not good:
                res += "  (WANT step %d, reason starting %r)" % (step, prefix)
        ok, n_ok = ok and good, n_ok + good
        print("%-4s %-72s %s" % ("ok" if good else "FAIL", name, res))
    print("\naccepted by 11.7b: (chat_template, BOS id, EOS id)")
    accepted = []
    for name, variant, blob, want in ACCEPTED:
        n += 1
        try:
            got = run_port(variant, blob)
            good = got == want
            res = "(%s, %s, %s)" % (short(got[0], 20), got[1], got[2])
            if not good:
                res += "  (WANT (%s, %s, %s))" % (short(want[0], 20), want[1], want[2])
            else:
                accepted.append((name, variant, blob, want))
        except hc.Refused as e:
            res, good = "REFUSED [%d] %s" % (e.step, e), False
        ok, n_ok = ok and good, n_ok + good
        print("%-4s %-72s %s" % ("ok" if good else "FAIL", name, res))
    print("\n%d of %d cases as 11.7b says (%d refused, %d accepted)%s"
          % (n_ok, n, len(REFUSED), len(ACCEPTED), "" if ok else "; SOME CASE NOT AS 11.7b SAYS"))

    ok_c, n_ok, n = True, 0, 0
    print("\nwith a chat_template.jinja, refused (11.7c at 11.7b's step 6, or the config first): "
          "field [11.7b step/11.7c step] reason")
    file_refused = []
    for name, variant, blob, ct, (field, step, c_step), prefix in FILE_REFUSED:
        n += 1
        try:
            got = run_port(variant, blob, ct)
            res, good = "ACCEPTED %s (refused by %s at %s)" % (short(got), field, step), False
        except hc.Refused as e:
            good = (e.field == field and e.step == step and getattr(e, "file_step", None) == c_step
                    and str(e).startswith(prefix))
            res = "%s [%d/%s] %s" % (e.field, e.step, getattr(e, "file_step", "-"), str(e)[:90])
            if not good:
                res += "  (WANT %s [%d/%s], reason starting %r)" % (field, step, c_step or "-", prefix)
        ok_c, n_ok = ok_c and good, n_ok + good
        print("%-4s %-72s %s" % ("ok" if good else "FAIL", name, res))
        if good and field == "chat_template" and not name.startswith("order"):
            file_refused.append((name, variant, blob, ct))
    print("\nwith a chat_template.jinja, accepted: (chat_template with 11.8's LF line ends, BOS id, EOS id)")
    file_accepted = []
    for name, variant, blob, ct, want in FILE_ACCEPTED:
        n += 1
        try:
            got = run_port(variant, blob, ct)
            # The file's text as 11.7c keeps it, compared as 11.8 compiles it (line ends LF);
            # `want` is written so.
            got = (hc.lf_line_ends(got[0]), got[1], got[2])
            good = got == want
            res = "(%s, %s, %s)" % (short(got[0], 20), got[1], got[2])
            if not good:
                res += "  (WANT (%s, %s, %s))" % (short(want[0], 20), want[1], want[2])
            else:
                file_accepted.append((name, variant, blob, ct, want))
        except hc.Refused as e:
            res, good = "REFUSED %s [%d] %s" % (e.field, e.step, e), False
        ok_c, n_ok = ok_c and good, n_ok + good
        print("%-4s %-72s %s" % ("ok" if good else "FAIL", name, res))
    print("\n%d of %d cases as 11.7c says (%d refused, %d accepted)%s"
          % (n_ok, n, len(FILE_REFUSED), len(FILE_ACCEPTED), "" if ok_c else "; SOME CASE NOT AS 11.7c SAYS"))
    if "--transformers" in sys.argv:
        compare_transformers(sys.argv[sys.argv.index("--transformers") + 1], accepted, file_accepted, file_refused)
    return 0 if ok and ok_c else 1


if __name__ == "__main__":
    sys.exit(main())
