"""The `llama` model of spec/COMPUTE.md section 11, in the `repro` profile, written from the spec
alone (no Rust read): seeded initialisation (section 2), the fixture's byte tokenizer and ChatML
template (11, "Golden vectors"; 11.7, 11.8), the rotary table (11.4), the forward pass with its
KV cache (11.5, 11.6), generation with section 8's `choose` (11.9) and the answer record (11.11).
Checks spec/vectors/compute-llama.json: `python3 llama.py` (after check.py has built libm.c).

The rotary table needs `powf`, `cosf` and `sinf` of the `libm` crate 0.2.16, which Appendix C does
not give (an open gap, 11.4). By default this port takes them from libm.c, which transcribes
FreeBSD's e_powf.c and musl's cosf/sinf (binary64 inside) from the public C sources; with
`--glibc` it takes the C library's instead, which does NOT reproduce the vector (see README.md)."""
import ctypes, ctypes.util, json, os, sys
import numpy as np
import blake3
from repro import F, dec_to_f32, fbits, ffrom, compute_stream, expf, _lib

HERE = os.path.dirname(os.path.abspath(__file__))
VECTOR = os.path.join(HERE, "..", "..", "vectors", "compute-llama.json")

# ---------- powf, cosf, sinf: NOT in Appendix C (open gap, 11.4) ----------
_clib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
for _l, _p in ((_lib, "my_"), (_clib, "")):
    for _n in ("powf", "cosf", "sinf"):
        getattr(_l, _p + _n).restype = ctypes.c_float
        getattr(_l, _p + _n).argtypes = [ctypes.c_float] * (2 if _n == "powf" else 1)
LIBM = {"port": (_lib.my_powf, _lib.my_cosf, _lib.my_sinf), "glibc": (_clib.powf, _clib.cosf, _clib.sinf)}
_powf, _cosf, _sinf = LIBM["port"]


def use_libm(which):
    """"port" (libm.c: FreeBSD/musl transcriptions) or "glibc" (the C library's)."""
    global _powf, _cosf, _sinf
    _powf, _cosf, _sinf = LIBM[which]


# a binary32 widened to a C double and back is exact, so these pass binary32 values through
def powf(x, y): return F(_powf(float(x), float(y)))
def cosf(x): return F(_cosf(float(x)))
def sinf(x): return F(_sinf(float(x)))


# ---------- config and layout (11.1, 11.2) ----------
def config(c):
    h, H, G = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    d = h // H
    return dict(h=h, I=c["intermediate_size"], L=c["num_hidden_layers"], H=H, G=G, d=d, r=H // G,
                kvw=G * d, V=c["vocab_size"], Pmax=c["max_position_embeddings"],
                eps=dec_to_f32(c["rms_norm_eps"]), theta=dec_to_f32(c["rope_theta"]),
                tied=c["tie_word_embeddings"])


def shapes(k):
    h, I, V, kvw = k["h"], k["I"], k["V"], k["kvw"]
    s = {"model.embed_tokens.weight": [V, h], "model.norm.weight": [h]}
    if not k["tied"]:
        s["lm_head.weight"] = [V, h]
    for l in range(k["L"]):
        p = "model.layers.%d." % l
        s.update({p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
                  p + "self_attn.q_proj.weight": [h, h], p + "self_attn.o_proj.weight": [h, h],
                  p + "self_attn.k_proj.weight": [kvw, h], p + "self_attn.v_proj.weight": [kvw, h],
                  p + "mlp.gate_proj.weight": [I, h], p + "mlp.up_proj.weight": [I, h],
                  p + "mlp.down_proj.weight": [h, I]})
    return {n: s[n] for n in sorted(s, key=lambda n: n.encode())}


def init_params(k, seed):
    """Section 2, the `llama` line: gains 1.0 (no draw), every other slot symmetric(a), a as gpt's."""
    a = F(F(0.02) * F(1.7320508))
    assert fbits(a) == 0x3d0de3bd
    st = compute_stream(seed, 0, 0, "init")
    P = {}
    for name, shape in shapes(k).items():
        if name.endswith("norm.weight"):
            P[name] = np.ones(shape, F)
            continue
        n = int(np.prod(shape))
        vals = np.empty(n, F)
        for i in range(n):
            vals[i] = st.symmetric(a)
        P[name] = vals.reshape(shape)
    return P


def params_bytes(P):
    return b"".join(np.ascontiguousarray(P[n], dtype="<f4").tobytes() for n in P)


# ---------- kernels (11.5, Appendix B) ----------
def linear(x, W):
    """x [T, in], W [out, in]: y[t][o] = sum_{j asc} x[t][j] * W[o][j], from +0."""
    acc = np.zeros((x.shape[0], W.shape[0]), F)
    for j in range(W.shape[1]):
        acc = acc + x[:, j:j + 1] * W[None, :, j]
    return acc


def rmsnorm(x, w, eps):
    T, h = x.shape
    s = np.zeros(T, F)
    for j in range(h):
        s = s + x[:, j] * x[:, j]
    r = F(1) / np.sqrt((s / F(h)) + eps)
    return w[None, :] * (x * r[:, None])


def silu(z):
    return z / (F(1) + expf(-z))


def softmax(s):
    """A.5 on a 1-D row."""
    mx = F(-np.inf)
    for j in range(s.shape[0]):
        if s[j] > mx:
            mx = s[j]
    e = expf(s - mx)
    sm = F(0)
    for j in range(s.shape[0]):
        sm = F(sm + e[j])
    return e / sm


def rope_entry(p, i, d, theta):
    e = F(F(2 * i) / F(d))
    inv = F(F(1) / powf(theta, e))
    ang = F(F(p) * inv)
    return cosf(ang), sinf(ang), (e, inv, ang)


class Model:
    def __init__(self, k, P):
        self.k, self.P = k, P
        self.head = P["model.embed_tokens.weight"] if k["tied"] else P["lm_head.weight"]
        self.table = {}   # p -> (cos [d/2], sin [d/2]); an entry depends on (p, i, d, theta) only

    def rot(self, p):
        if p not in self.table:
            d = self.k["d"]
            cs = [rope_entry(p, i, d, self.k["theta"]) for i in range(d // 2)]
            self.table[p] = (np.array([c for c, _, _ in cs], F), np.array([s for _, s, _ in cs], F))
        return self.table[p]

    def rope(self, x, p):
        """x: [n, d] heads of one position, rotated in place (rotate-half, b at i + d/2)."""
        cos, sin = self.rot(p)
        h2 = self.k["d"] // 2
        a = x[:, :h2].copy(); b = x[:, h2:].copy()
        x[:, :h2] = (a * cos) - (b * sin)
        x[:, h2:] = (b * cos) + (a * sin)

    def new_cache(self):
        return {"K": [[] for _ in range(self.k["L"])], "V": [[] for _ in range(self.k["L"])]}

    def forward(self, cache, toks):
        """Runs toks after the cache's positions; returns the logits of every position of the call."""
        k, P = self.k, self.P
        s = len(cache["K"][0]); T = len(toks)
        if s + T > k["Pmax"] or any(t >= k["V"] for t in toks):
            raise ValueError("inputs")
        H, G, d, r, eps = k["H"], k["G"], k["d"], k["r"], k["eps"]
        scale = F(F(1) / np.sqrt(F(d)))
        x = P["model.embed_tokens.weight"][np.array(toks)].copy()
        for l in range(k["L"]):
            pre = "model.layers.%d." % l
            a = rmsnorm(x, P[pre + "input_layernorm.weight"], eps)
            q = linear(a, P[pre + "self_attn.q_proj.weight"])
            kk = linear(a, P[pre + "self_attn.k_proj.weight"])
            v = linear(a, P[pre + "self_attn.v_proj.weight"])
            for t in range(T):
                qh = q[t].reshape(H, d); self.rope(qh, s + t); q[t] = qh.reshape(-1)
                kh = kk[t].reshape(G, d); self.rope(kh, s + t); kk[t] = kh.reshape(-1)
                cache["K"][l].append(kk[t].copy()); cache["V"][l].append(v[t].copy())
            Kc = np.array(cache["K"][l]); Vc = np.array(cache["V"][l])
            o = np.zeros((T, k["h"]), F)
            for t in range(T):
                p = s + t
                for c in range(H):
                    g = c // r
                    qc = q[t, c * d:(c + 1) * d]; Ku = Kc[:p + 1, g * d:(g + 1) * d]
                    sc = np.zeros(p + 1, F)
                    for i in range(d):
                        sc = sc + qc[i] * Ku[:, i]
                    sc = sc * scale
                    w = softmax(sc)
                    acc = np.zeros(d, F)
                    for u in range(p + 1):
                        acc = acc + w[u] * Vc[u, g * d:(g + 1) * d]
                    o[t, c * d:(c + 1) * d] = acc
            x = x + linear(o, P[pre + "self_attn.o_proj.weight"])
            b = rmsnorm(x, P[pre + "post_attention_layernorm.weight"], eps)
            m = silu(linear(b, P[pre + "mlp.gate_proj.weight"])) * linear(b, P[pre + "mlp.up_proj.weight"])
            x = x + linear(m, P[pre + "mlp.down_proj.weight"])
        f = rmsnorm(x, P["model.norm.weight"], eps)
        return linear(f, self.head)


# ---------- the fixture's tokenizer (11, "Golden vectors"; 11.7) ----------
def _bytes_to_unicode():   # GPT-2's byte-to-character table
    bs = list(range(33, 127)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE2CH = _bytes_to_unicode()
CH2BYTE = {c: b for b, c in BYTE2CH.items()}


class ByteTokenizer:
    """Vocabulary: printable ASCII 33..126 as ids 0..93, then 'Ġ', 'Ċ', <|im_start|>, <|im_end|>.
    No merges, so BPE leaves every byte symbol on its own and the pre-tokenizer's split is moot.
    Guessed (the spec does not say): <|im_start|> and <|im_end|> are added tokens of type 3
    (control), no BOS, eos = <|im_end|>."""
    def __init__(self):
        self.tokens = [chr(c) for c in range(33, 127)] + ["\u0120", "\u010a", "<|im_start|>", "<|im_end|>"]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.added = {"<|im_start|>": 96, "<|im_end|>": 97}
        self.control = {96, 97}
        self.eos = 97

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            hit = None
            for a in sorted(self.added, key=len, reverse=True):   # leftmost, longest
                if text.startswith(a, i):
                    hit = a; break
            if hit:
                out.append(self.added[hit]); i += len(hit); continue
            j = i + 1
            while j < len(text) and not any(text.startswith(a, j) for a in self.added):
                j += 1
            for byte in text[i:j].encode("utf-8"):
                t = self.ids.get(BYTE2CH[byte])
                if t is not None:
                    out.append(t)          # a symbol not in the vocabulary is dropped
            i = j
        return out

    def encode_chat(self, text):
        """11.8: a rendered chat is encoded by 11.7 with its BOS rule, no second BOS when the text
        already starts with the BOS token's string; this tokenizer has no BOS, so encode(text)."""
        return self.encode(text)

    def decode(self, ids):
        b = bytearray()
        for t in ids:
            if t >= len(self.tokens) or t in self.control:
                continue
            for ch in self.tokens[t]:
                b += bytes([CH2BYTE[ch]]) if ch in CH2BYTE else ch.encode("utf-8")
        return bytes(b).decode("utf-8", errors="replace")


def render_chat(template, messages, bos="", eos="<|im_end|>"):
    """Python's jinja2 standing in for minijinja 2.24.0 (11.8), with its settings; None if jinja2
    is not installed (the prompt_text check is then skipped)."""
    try:
        import jinja2
    except ImportError:
        return None
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
                             undefined=jinja2.Undefined)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=bos, eos_token=eos)


# ---------- decoding (section 8) and generation (11.9) ----------
def total_key(x):
    b = fbits(x)
    return (b ^ 0xffffffff) if b & 0x80000000 else (b | 0x80000000)


def choose(lg, dec, seed, item, n):
    V = lg.shape[0]
    if dec["decoding"] == "greedy":
        best = 0
        for i in range(V):
            if lg[i] > lg[best]:
                best = i
        return best
    temp = dec_to_f32(dec["temperature"])
    order = sorted(range(V), key=lambda i: (-total_key(lg[i]), i))
    kk = min(dec["top_k"] or V, V)
    order = order[:kk]
    s = np.array([lg[o] for o in order], F) / temp
    p = softmax(s)
    if dec.get("top_p") is not None:
        # The nucleus: candidates up to the first running sum >= top_p, their softmax afresh.
        tp = dec_to_f32(dec["top_p"])
        acc = F(0)
        for j in range(kk):
            acc = F(acc + p[j])
            if acc >= tp:
                kk = j + 1
                break
        order = order[:kk]
        s = np.array([lg[o] for o in order], F) / temp
        p = softmax(s)
    u = compute_stream(seed, item, n, "sample").unit_f32()
    acc = F(0)
    for j in range(kk):
        acc = F(acc + p[j])
        if u < acc:
            return order[j]
    return order[kk - 1]


def generate(model, tok, prompt, dec, seed, item, max_new, stop=()):
    cache = model.new_cache()
    lg = model.forward(cache, prompt)[-1]
    ts, zs = [], []
    for n in range(max_new):
        if not np.all(np.isfinite(lg)):
            raise ValueError("NonFinite logits at step %d" % n)
        t = choose(lg, dec, seed, item, n)
        ts.append(t); zs.append(fbits(lg[t]))
        if t == tok.eos:
            return dict(finish="end", logits=zs, text=tok.decode(ts[:-1]), tokens=ts)
        if stop:
            s = tok.decode(ts)
            hits = [s.encode().find(x.encode()) for x in stop if x]
            hits = [h for h in hits if h >= 0]
            if hits:
                return dict(finish="stop", logits=zs, text=s.encode()[:min(hits)].decode(), tokens=ts)
        if n + 1 < max_new:
            lg = model.forward(cache, [t])[-1]
    return dict(finish="length", logits=zs, text=tok.decode(ts), tokens=ts)


def check_answer(model, tok, prompt, dec, seed, item, max_new, answer, stop=()):
    """11.10 under `Exact` (repro): one forward pass with a fresh cache over the prompt and the
    answer's tokens but the last. Returns None if accepted, else the kind of wrong answer."""
    ts, zs, n = answer["tokens"], answer["logits"], len(answer["tokens"])
    if not prompt:
        raise ValueError("empty prompt")
    if len(zs) != n or n == 0 or n > max_new:
        return "Ending"
    if any(t >= model.k["V"] for t in ts) or len(prompt) + n - 1 > model.k["Pmax"]:
        return "Ending"
    rows = model.forward(model.new_cache(), list(prompt) + ts[:-1])[len(prompt) - 1:]
    for i in range(n):
        lg = rows[i]
        if not np.all(np.isfinite(lg)):
            raise ValueError("NonFinite logits at step %d" % i)
        if choose(lg, dec, seed, item, i) != ts[i]:
            return "Token"
        if fbits(lg[ts[i]]) != zs[i]:
            return "Logit"
        if i < n - 1 and ts[i] == tok.eos:
            return "Ending"
    stop = [x for x in stop if x]

    def cut(s):
        hits = [h for h in (s.encode().find(x.encode()) for x in stop) if h >= 0]
        return s.encode()[:min(hits)].decode() if hits else None
    if ts[-1] == tok.eos:
        finish, text = "end", tok.decode(ts[:-1])
    else:
        s = tok.decode(ts)
        c = cut(s)
        finish, text = ("stop", c) if c is not None else ("length", s)
    if finish == "length" and n != max_new:
        return "Ending"
    if stop and n > 1 and cut(tok.decode(ts[:-1])) is not None:
        return "Ending"
    if answer["finish"] != finish:
        return "Ending"
    if answer["text"] != text:
        return "Text"
    return None


def json_str(s):
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"': out.append('\\"')
        elif ch == '\\': out.append('\\\\')
        elif ch == '\b': out.append('\\b')
        elif ch == '\f': out.append('\\f')
        elif ch == '\n': out.append('\\n')
        elif ch == '\r': out.append('\\r')
        elif ch == '\t': out.append('\\t')
        elif o < 0x20: out.append('\\u%04x' % o)
        else: out.append(ch)
    out.append('"')
    return "".join(out)


def record_bytes(a):
    return ('{"finish":%s,"logits":[%s],"text":%s,"tokens":[%s]}' % (
        json_str(a["finish"]), ",".join(str(b) for b in a["logits"]), json_str(a["text"]),
        ",".join(str(t) for t in a["tokens"]))).encode("utf-8")


# ---------- the check ----------
def check(path=VECTOR, verbose=True):
    """Returns a list of (field, ok)."""
    v = json.load(open(path))
    k = config(v["config"])
    P = init_params(k, v["init_seed"])
    if "norm_gains" in v:  # the vector's rule: element i of every *norm.weight is 1 + (i mod 8)/32
        for name in P:
            if name.endswith("norm.weight"):
                P[name] = np.array([F(1 + (i % 8) / 32) for i in range(P[name].size)], F)
    res = [("params_blake3", blake3.blake3(params_bytes(P)).hexdigest() == v["params_blake3"])]
    tok = ByteTokenizer()
    text = render_chat(v["chat_template"], v["chat"])
    if text is not None:
        res.append(("prompt_text", text == v["prompt_text"]))
    else:
        print("compute-llama.json: prompt_text not checked (pip install jinja2)")
    ids = tok.encode_chat(v["prompt_text"])  # 11.8: the rendered chat
    res.append(("prompt", ids == v["prompt"]))
    model = Model(k, P)
    lg = model.forward(model.new_cache(), ids)[-1]
    res.append(("prefill_logits_blake3",
                blake3.blake3(np.ascontiguousarray(lg, "<f4").tobytes()).hexdigest() == v["prefill_logits_blake3"]))
    for c in v["cases"]:
        a = generate(model, tok, v["prompt"], c["decoding"], c["seed"], c["item"], c["max_new_tokens"])
        res.append(("%s answer" % c["name"], a == c["answer"]))
        res.append(("%s record_blake3" % c["name"], blake3.blake3(record_bytes(a)).hexdigest() == c["record_blake3"]))
        # 11.10: the committed answer passes the one-pass check (and, by 11.6, sees the same bits)
        res.append(("%s one-pass check (11.10)" % c["name"], check_answer(
            model, tok, v["prompt"], c["decoding"], c["seed"], c["item"], c["max_new_tokens"], c["answer"]) is None))
        if verbose and a != c["answer"]:
            print("  got ", a, "\n  want", c["answer"])
    return res


def rotary_margins(path=VECTOR, positions=None):
    """For every rotary-table entry the vector uses: how far (in ulps of the binary32 result) the
    exact value of powf, cosf, sinf at the binary32 argument lies from a rounding boundary (a
    midpoint between two binary32 numbers). Any routine whose error before its final rounding is
    below that margin returns the same bits as the correctly rounded one."""
    import mpmath
    mpmath.mp.prec = 200
    v = json.load(open(path))
    k = config(v["config"])
    if positions is None:
        positions = range(len(v["prompt"]) + max(c["max_new_tokens"] for c in v["cases"]) - 1)

    def margin(exact, got):
        got = F(got)
        lo, hi = np.nextafter(got, F(-np.inf)), np.nextafter(got, F(np.inf))
        ulp = mpmath.mpf(float(hi)) - mpmath.mpf(float(got))
        ulp_lo = mpmath.mpf(float(got)) - mpmath.mpf(float(lo))
        mid_hi = mpmath.mpf(float(got)) + ulp / 2
        mid_lo = mpmath.mpf(float(got)) - ulp_lo / 2
        if not (mid_lo <= exact <= mid_hi):
            return None   # got is not the correctly rounded value
        return float(min(mid_hi - exact, exact - mid_lo) / ulp)

    worst = {"powf": (9, None), "cosf": (9, None), "sinf": (9, None)}
    notcr = []
    theta = mpmath.mpf(float(k["theta"]))
    d = k["d"]
    for i in range(d // 2):
        e = F(F(2 * i) / F(d))
        m = margin(theta ** mpmath.mpf(float(e)), powf(k["theta"], e))
        if m is None:
            notcr.append(("powf", float(e)))
        elif m < worst["powf"][0]:
            worst["powf"] = (m, float(e))
    for p in positions:
        for i in range(d // 2):
            c, s, (e, inv, ang) = rope_entry(p, i, d, k["theta"])
            A = mpmath.mpf(float(ang))
            for name, exact, got in (("cosf", mpmath.cos(A), c), ("sinf", mpmath.sin(A), s)):
                m = margin(exact, got)
                if m is None:
                    notcr.append((name, p, i, float(ang)))
                elif m < worst[name][0]:
                    worst[name] = (m, (p, i, float(ang)))
    return worst, notcr


def compare_libms(path=VECTOR):
    """The rotary-table inputs where the C library's routines and libm.c's disagree, over the
    positions the vector runs (prompt plus generated tokens, less the last one)."""
    v = json.load(open(path))
    k = config(v["config"])
    out = []
    d, theta = k["d"], k["theta"]
    for i in range(d // 2):
        e = F(F(2 * i) / F(d))
        a, b = F(LIBM["port"][0](float(theta), float(e))), F(LIBM["glibc"][0](float(theta), float(e)))
        if fbits(a) != fbits(b):
            out.append(("powf", (float(theta), float(e)), hex(fbits(a)), hex(fbits(b))))
    old = (_powf, _cosf, _sinf)
    use_libm("port")
    for p in range(len(v["prompt"]) + max(c["max_new_tokens"] for c in v["cases"]) - 1):
        for i in range(d // 2):
            _, _, (e, inv, ang) = rope_entry(p, i, d, theta)
            for n, j in (("cosf", 1), ("sinf", 2)):
                a, b = F(LIBM["port"][j](float(ang))), F(LIBM["glibc"][j](float(ang)))
                if fbits(a) != fbits(b):
                    out.append((n, (p, i, float(ang)), hex(fbits(a)), hex(fbits(b))))
    globals().update(zip(("_powf", "_cosf", "_sinf"), old))
    return out


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    if "--glibc" in sys.argv:
        use_libm("glibc")
    bad = 0
    for f, ok in check():
        print("%-40s %s" % (f, "ok" if ok else "MISMATCH")); bad += not ok
    if "--compare" in sys.argv:
        for row in compare_libms():
            print("libm.c vs glibc:", row)
    if "--margins" in sys.argv:
        worst, notcr = rotary_margins()
        print("not correctly rounded:", notcr)
        for n, (m, where) in worst.items():
            print("%s: smallest distance to a rounding boundary %.4f ulp at %s" % (n, m, where))
    sys.exit(1 if bad else 0)
