"""Self-test of hf_tokenizer_config.py (spec/COMPUTE.md 11.7b): tokenizer_config.json files that
11.7b refuses, each checked to be refused at the step 11.7b's numbered order reports first (cases
with two failures check that order) with the reason starting as 11.7b says, and files it accepts,
each checked to give the chat template, BOS id and EOS id 11.7b prescribes. The tokenizer.json
beside them is compute-text.json's `tokenizer_json` read by 11.7a (hf_tokenizer.py): as it is
(its TemplateProcessing adds the BOS `<|im_start|>`, id 96; `<|im_end|>` is 97), with
`post_processor` null (no BOS), or with `post_processor` null and an added token 110 whose
string `<|im_end|>` (or `!`) repeats a vocabulary token's (11.7a accepts it; 11.7 refuses the
duplicate only when it builds the tokenizer, after 11.7b).

    python3 hf_tokenizer_config_exp.py [--transformers PYTHON]

With --transformers, PYTHON (an interpreter with `transformers` and `jinja2`) loads every
accepted pair with AutoTokenizer.from_pretrained(dir) and the report sets beside 11.7b's values
what it reads: the chat template it renders (for the list form: which entry), its
bos_token_id / eos_token_id, a plain prompt's ids (add_special_tokens true) and a chat's ids
(apply_chat_template, tokenize true), the last two against 11.7's encode with its BOS rule (the
spec's chat rendered here by jinja2 with transformers' settings, trim_blocks and lstrip_blocks,
standing in for minijinja). Exit 1 if a case does not go as 11.7b says."""
import copy, json, os, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hf_tokenizer as hf  # noqa: E402
import hf_tokenizer_config as hc  # noqa: E402

V = json.load(open(os.path.join(HERE, "..", "..", "vectors", "compute-text.json"), encoding="utf-8"))
TJ = V["tokenizer_json"]


def tj_variant(name):
    d = copy.deepcopy(TJ)
    if name in ("nopp", "dup", "dup!"):
        d["post_processor"] = None
    if name in ("dup", "dup!"):
        d["added_tokens"].append({"id": 110, "content": "<|im_end|>" if name == "dup" else "!",
                                  "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True})
    return json.dumps(d, ensure_ascii=False).encode("utf-8")


TOKENIZERS = {k: tj_variant(k) for k in ("pp", "nopp", "dup", "dup!")}
KEYS = {k: hf.keys_from_tokenizer_json(b) for k, b in TOKENIZERS.items()}

PREFIX = {1: "size", 2: "not a tokenizer_config.json", 3: "not a JSON object", 4: "add_eos_token",
          5: "add_bos_token", 6: "chat_template", 7: "bos_token", 8: "eos_token"}

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


# (case, tokenizer variant, config bytes, step 11.7b must refuse it at)
REFUSED = [
    # 1
    ("4,194,305 bytes (valid JSON, spaces)", "pp", padded({"eos_token": IM_END}, 4_194_305), 1),
    ("order: over 4 MiB (1) and not JSON (2)", "pp", b"{" + b"x" * 4_194_304, 1),
    # 2
    ("not UTF-8 (0xFF in a string)", "pp", b'{"x": "\xff"}', 2),
    ("byte-order mark", "pp", b"\xef\xbb\xbf" + J({"eos_token": IM_END}), 2),
    ("NaN in an ignored key", "pp", R('{"model_max_length": NaN}'), 2),
    ("Infinity in an ignored key", "pp", R('{"model_max_length": Infinity}'), 2),
    ("trailing comma", "pp", R('{"eos_token": "<|im_end|>",}'), 2),
    ("unpaired surrogate escape in an ignored key", "pp", R('{"x": "\\ud800"}'), 2),
    ("key twice: an ignored key (model_max_length)", "pp", R('{"model_max_length": 1, "model_max_length": 1}'), 2),
    ("key twice: eos_token", "pp", R('{"eos_token": "<|im_start|>", "eos_token": "<|im_end|>"}'), 2),
    ("key twice inside a chat_template entry", "pp",
     R('{"chat_template": [{"name": "default", "template": "a", "template": "b"}]}'), 2),
    ("key twice in added_tokens_decoder (ignored key)", "pp",
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
    ("add_bos_token false, post-processor adds a BOS", "pp", J({"add_bos_token": False}), 5),
    ("add_bos_token true, post-processor adds none", "nopp", J({"add_bos_token": True}), 5),
    ("add_bos_token \"true\"", "pp", J({"add_bos_token": "true"}), 5),
    ("add_bos_token 1", "pp", J({"add_bos_token": 1}), 5),
    ("order: add_bos_token wrong (5) and chat_template 5 (6)", "pp",
     J({"add_bos_token": False, "chat_template": 5}), 5),
    # 6
    ("chat_template a number", "pp", J({"chat_template": 5}), 6),
    ("chat_template true", "pp", J({"chat_template": True}), 6),
    ("chat_template an object {default: ...}", "pp", J({"chat_template": {"default": T}}), 6),
    ("chat_template [] (no default)", "pp", J({"chat_template": []}), 6),
    ("chat_template list without default", "pp", J({"chat_template": L(("tool_use", T), ("rag", T))}), 6),
    ("chat_template list of one entry not named default", "pp", J({"chat_template": L(("chatml", T))}), 6),
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
    ("bos_token not a token (<s>)", "nopp", J({"bos_token": "<s>"}), 7),
    ("bos_token \"\" (not a token)", "nopp", J({"bos_token": ""}), 7),
    ("bos_token ' the' (raw text; the token is 'Ġthe')", "nopp", J({"bos_token": " the"}), 7),
    ("bos_token <|im_end|> (97), post-processor adds 96", "pp", J({"bos_token": IM_END}), 7),
    ("bos_token AddedToken <|im_end|>, post-processor adds 96", "pp", J({"bos_token": added_token(IM_END)}), 7),
    ("bos_token <|im_end|>, more than one token (97, 110)", "dup", J({"bos_token": IM_END}), 7),
    ("bos_token '!', more than one token (0, 110)", "dup!", J({"bos_token": "!"}), 7),
    ("order: bos_token bad (7) and eos_token bad (8)", "pp", J({"bos_token": "<s>", "eos_token": "</s>"}), 7),
    # 8
    ("eos_token an integer (97)", "pp", J({"eos_token": 97}), 8),
    ("eos_token an object without content", "pp", J({"eos_token": {"id": 97}}), 8),
    ("eos_token not a token (</s>)", "pp", J({"eos_token": "</s>"}), 8),
    ("eos_token <|im_end|>, more than one token (97, 110)", "dup", J({"eos_token": added_token(IM_END)}), 8),
    ("eos_token ' the' (raw text)", "pp", J({"eos_token": " the"}), 8),
]

DEFAULT_LAST = [{"name": "tool_use", "template": "tools"}, {"name": "rag", "template": "rag"},
                {"name": "default", "template": T, "description": "x", "extra": [1, {"y": None}]}]
IGNORED = {
    "model_max_length": 1000000000000000019884624838656, "tokenizer_class": "LlamaTokenizer",
    "clean_up_tokenization_spaces": "junk", "pad_token": 5, "unk_token": {"x": []},
    "added_tokens_decoder": {"96": {"content": "nonsense"}}, "legacy": None, "x": 1.5e300,
    "additional_special_tokens": [7], "add_prefix_space": True, "split_special_tokens": "no",
}

# (case, tokenizer variant, config bytes, (chat_template, bos id, eos id))
ACCEPTED = [
    ("{} (post-processor BOS 96 kept)", "pp", J({}), (None, 96, None)),
    ("{} (no BOS anywhere)", "nopp", J({}), (None, None, None)),
    ("SmolLM2-style: AddedTokens, add_bos_token true, string template", "pp",
     J({"add_bos_token": True, "add_eos_token": False, "bos_token": added_token(IM_START),
        "eos_token": added_token(IM_END), "chat_template": T, "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer", "clean_up_tokenization_spaces": False}), (T, 96, 97)),
    ("strings, no post-processor BOS: BOS for the template only", "nopp",
     J({"bos_token": IM_START, "eos_token": IM_END, "chat_template": T}), (T, 96, 97)),
    ("add_bos_token false, no post-processor BOS", "nopp", J({"add_bos_token": False}), (None, None, None)),
    ("add_bos_token null, post-processor BOS", "pp", J({"add_bos_token": None}), (None, 96, None)),
    ("add_bos_token null, no post-processor BOS", "nopp", J({"add_bos_token": None}), (None, None, None)),
    ("add_bos_token true, post-processor BOS", "pp", J({"add_bos_token": True}), (None, 96, None)),
    ("add_eos_token null", "pp", J({"add_eos_token": None}), (None, 96, None)),
    ("add_eos_token false", "pp", J({"add_eos_token": False, "eos_token": IM_END}), (None, 96, 97)),
    ("bos_token absent, post-processor BOS: kept (ASSUMED)", "pp", J({"eos_token": IM_END, "chat_template": T}),
     (T, 96, 97)),
    ("bos_token null, post-processor BOS: kept (ASSUMED)", "pp", J({"bos_token": None, "chat_template": T}),
     (T, 96, None)),
    ("bos_token an object with only content", "pp", J({"bos_token": {"content": IM_START}}), (None, 96, None)),
    ("bos_token AddedToken, other keys odd (ignored)", "pp",
     J({"bos_token": {"content": IM_START, "lstrip": "x", "special": 5, "__type": "Other"}}), (None, 96, None)),
    ("eos_token = bos_token", "nopp", J({"bos_token": IM_END, "eos_token": IM_END}), (None, 97, 97)),
    ("eos_token an ordinary token in byte-level form ('Ġthe', 101)", "nopp",
     J({"eos_token": "\u0120the", "chat_template": T_EOS}), (T_EOS, None, 101)),
    ("eos_token an ordinary token ('the', 100)", "nopp", J({"eos_token": "the", "chat_template": T_EOS}),
     (T_EOS, None, 100)),
    ("bos_token an ordinary token ('!', 0), no post-processor BOS", "nopp", J({"bos_token": "!"}), (None, 0, None)),
    ("eos_token null", "pp", J({"eos_token": None}), (None, 96, None)),
    ("chat_template null", "pp", J({"chat_template": None}), (None, 96, None)),
    ("chat_template \"\"", "pp", J({"chat_template": ""}), ("", 96, None)),
    ("chat_template list, default first", "pp", J({"chat_template": L(("default", T), ("tool_use", "t"))}),
     (T, 96, None)),
    ("chat_template list, default last, other keys in entries", "pp", J({"chat_template": DEFAULT_LAST}),
     (T, 96, None)),
    ("chat_template list, only default", "pp", J({"chat_template": L(("default", T))}), (T, 96, None)),
    ("chat_template list, names differing in case (Default, default)", "pp",
     J({"chat_template": L(("Default", "D"), ("default", T))}), (T, 96, None)),
    ("unknown and ignored keys of any value", "pp", J(dict(IGNORED, eos_token=IM_END)), (None, 96, 97)),
    ("127 levels of nesting in an ignored key", "pp", nested(127), (None, 96, None)),
    ("262,144 keys in an object", "pp", many_keys(262_144), (None, 96, 97)),
    ("exactly 4,194,304 bytes", "pp", padded({"eos_token": IM_END}, 4_194_304), (None, 96, 97)),
    ("a 5000-digit number in an ignored key", "pp", R('{"x": ' + "9" * 5000 + ', "eos_token": "<|im_end|>"}'),
     (None, 96, 97)),
    ("whitespace around the document, escapes in keys", "pp",
     R(' \n{"eos_\\u0074oken" : "<|im_end|>" }\t\r\n'), (None, 96, 97)),
]


def run_port(variant, blob):
    k = KEYS[variant]
    return hc.read(k["tokenizer.ggml.tokens"], k.get("tokenizer.ggml.bos_token_id"),
                   k["tokenizer.ggml.add_bos_token"], blob)


def short(v, n=40):
    s = repr(v)
    return s if len(s) <= n else s[:n] + "..."


# ---------- transformers, in another interpreter ----------
TF_HELPER = r'''
import json, os, sys, tempfile, warnings, logging
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from transformers import AutoTokenizer
import transformers
cases = json.load(open(sys.argv[1]))
out = {"version": transformers.__version__, "cases": []}
msgs = [{"role": "user", "content": "the other"}]
for c in cases:
    d = tempfile.mkdtemp()
    open(os.path.join(d, "tokenizer.json"), "wb").write(bytes.fromhex(c["tj"]))
    open(os.path.join(d, "tokenizer_config.json"), "wb").write(bytes.fromhex(c["cfg"]))
    r = {}
    try:
        t = AutoTokenizer.from_pretrained(d)
    except BaseException as e:
        r["load"] = "%s: %s" % (type(e).__name__, str(e)[:100])
        out["cases"].append(r); continue
    r["bos"], r["eos"], r["len"] = t.bos_token_id, t.eos_token_id, len(t)
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

PLAIN = "the other <|im_end|> 20"


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
            chat = tok.encode(rendered)
        except ImportError:
            pass
    return plain, rendered, chat


def compare_transformers(python, rows):
    """rows: [(name, variant, blob, want)] accepted by the port."""
    cases = [{"tj": TOKENIZERS[v].hex(), "cfg": b.hex(), "plain": PLAIN} for _, v, b, _ in rows]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases, f)
    res = subprocess.run([python, "-c", TF_HELPER, f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if res.returncode != 0:
        print("transformers helper failed:\n" + res.stderr[-2000:])
        return
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print("\ntransformers %s (AutoTokenizer.from_pretrained) on the accepted pairs; '=' agrees with 11.7b/11.7/11.8"
          % out["version"])
    n_diff = 0
    for (name, variant, blob, want), r in zip(rows, out["cases"]):
        if "load" in r:
            print("  DIFF %-60s transformers refuses to load: %s" % (name, r["load"]))
            n_diff += 1
            continue
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
        n_diff += bool(notes)
        print("  %-4s %-60s %s" % ("DIFF" if notes else "=", name, "; ".join(notes)))
    print("  %d of %d accepted pairs read differently by transformers" % (n_diff, len(rows)))


def main():
    ok, n_ok, n = True, 0, 0
    print("refused by 11.7b (hf_tokenizer_config.py): [step] reason")
    for name, variant, blob, step in REFUSED:
        n += 1
        try:
            got = run_port(variant, blob)
            res, good = "ACCEPTED %s (11.7b refuses it at %d)" % (short(got), step), False
        except hc.Refused as e:
            good = e.step == step and str(e).startswith(PREFIX[step])
            res = "[%d] %s" % (e.step, str(e)[:110])
            if not good:
                res += "  (WANT step %d, reason starting %r)" % (step, PREFIX[step])
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
    if "--transformers" in sys.argv:
        compare_transformers(sys.argv[sys.argv.index("--transformers") + 1], accepted)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
