"""`llama` training in the `repro` profile (spec/COMPUTE.md 11.12 and Appendix A.9a), written from
the spec alone (no Rust read): the forward pass of 11.5 over B windows of T = Pmax tokens (each
from position 0) keeping what A.9a says it keeps, A.7's loss and dlogits, A.9a's backward pass
(RMSNorm, SwiGLU, rotary and grouped-query attention backward, tied or untied head), then
section 4's optimizer; rows drawn from a token blob as a `gpt`'s (section 3); checkpoints,
segment losses and the weights file as every training task's (section 5).

Checks spec/vectors/compute-llama-train.json: `python3 llama_train.py` (after check.py has built
libm.c). `--forward` also checks each step's logits against llama.py's inference forward (A.9a:
"its logits bit for bit those of an inference call over the same tokens")."""
import json, os, sys
import numpy as np
from repro import F, dec_to_f32, fbits, expf, logf, st_parse, state_bytes, weights_bytes, b3, compute_stream
from model import opt_step, softmax_rows
import llama

HERE = os.path.dirname(os.path.abspath(__file__))
VECTOR = os.path.join(HERE, "..", "..", "vectors", "compute-llama-train.json")
Z = F(0)


# ---------- kernels (11.5 forward; A.9a's three local rules) ----------
def linear(x, W):
    """x [R, in], W [out, in]: y[i][o] = sum_{j asc} x[i][j] * W[o][j], from +0."""
    acc = np.zeros((x.shape[0], W.shape[0]), F)
    for j in range(W.shape[1]):
        acc = acc + x[:, j:j + 1] * W[None, :, j]
    return acc


def rmsnorm(x, w, eps):
    """11.5; returns the output and the row scales r."""
    R, n = x.shape
    s = np.zeros(R, F)
    for j in range(n):
        s = s + x[:, j] * x[:, j]
    r = F(1) / np.sqrt((s / F(n)) + eps)
    return w[None, :] * (x * r[:, None]), r


def linear_backward(dy, x, W, dx, dW):
    """A.9a: dx[i][j] += sum_{o asc} dy[i][o] * W[o][j] (the sum formed, then added once);
    dW[o][j] += sum_{i asc} dy[i][o] * x[i][j]. dx, dW: the buffers added into (None: fresh +0).
    Returns (dx, dW)."""
    R, out = dy.shape
    inn = W.shape[1]
    acc = np.zeros((R, inn), F)
    for o in range(out):
        acc = acc + dy[:, o:o + 1] * W[None, o, :]
    dx = (np.zeros((R, inn), F) if dx is None else dx) + acc
    accw = np.zeros((out, inn), F)
    for i in range(R):
        accw = accw + dy[i][:, None] * x[i][None, :]
    dW = (np.zeros((out, inn), F) if dW is None else dW) + accw
    return dx, dW


def rmsnorm_backward(dy, x, r, w, dx):
    """A.9a: dw[j] = +0 + sum_i dy[i][j] * (x[i][j] * r_i); per row dot = sum_j (dy*w)*(x*r),
    mean = dot / n, dx[j] += r * ((dy[j]*w[j]) - (x[j]*r) * mean). Returns (dx, dw)."""
    R, n = x.shape
    xr = x * r[:, None]
    accw = np.zeros(n, F)
    for i in range(R):
        accw = accw + dy[i] * xr[i]
    dw = Z + accw
    dyw = dy * w[None, :]
    dot = np.zeros(R, F)
    for j in range(n):
        dot = dot + dyw[:, j] * xr[:, j]
    mean = dot / F(n)
    dx = dx + r[:, None] * (dyw - xr * mean[:, None])
    return dx, dw


def rope_fwd(x, cos, sin):
    """x [R, n, d] (n heads), cos/sin [R, d/2] for each row's position; 11.4."""
    h2 = x.shape[2] // 2
    a = x[:, :, :h2]; b = x[:, :, h2:]
    c = cos[:, None, :]; s = sin[:, None, :]
    return np.concatenate([(a * c) - (b * s), (b * c) + (a * s)], axis=2)


def rope_bwd(g, cos, sin):
    """A.9a: gv[e] = a*cos + b*sin; gv[e+half] = b*cos - a*sin (a = gv[e], b = gv[e+half])."""
    h2 = g.shape[2] // 2
    a = g[:, :, :h2]; b = g[:, :, h2:]
    c = cos[:, None, :]; s = sin[:, None, :]
    return np.concatenate([(a * c) + (b * s), (b * c) - (a * s)], axis=2)


def silu(z):
    return z / (F(1) + expf(-z))


# ---------- the step ----------
class Trainer:
    def __init__(self, k):
        self.k = k
        T, d = k["Pmax"], k["d"]
        tab = llama.Model(k, {"model.embed_tokens.weight": None, "lm_head.weight": None})
        cs = [tab.rot(p) for p in range(T)]
        self.cos = np.array([c for c, _ in cs], F)      # [T, d/2]
        self.sin = np.array([s for _, s in cs], F)
        self.scale = F(F(1) / np.sqrt(F(d)))
        self.vis = np.arange(T)[None, :] <= np.arange(T)[:, None]   # [t, u]: u <= t

    def attention(self, q, kk, v, B):
        """q [BT, H, d] rotated, kk, v [BT, G, d]. Per (b, c) with g = c // r (11.5)."""
        k = self.k; T, H, d, r = k["Pmax"], k["H"], k["d"], k["r"]
        gi = np.arange(H) // r
        Q = q.reshape(B, T, H, d).transpose(0, 2, 1, 3)                 # B,H,T,d
        K = kk.reshape(B, T, k["G"], d)[:, :, gi].transpose(0, 2, 1, 3)  # B,H,T,d (kv head per query head)
        Vv = v.reshape(B, T, k["G"], d)[:, :, gi].transpose(0, 2, 1, 3)
        vis = self.vis[None, None]
        s = np.zeros((B, H, T, T), F)
        for i in range(d):
            s = s + Q[:, :, :, None, i] * K[:, :, None, :, i]
        s = s * self.scale
        mx = np.full((B, H, T), -np.inf, F)
        for u in range(T):
            mx = np.where((s[..., u] > mx) & self.vis[None, None, :, u], s[..., u], mx)
        e = expf(np.where(vis, s - mx[..., None], F(-np.inf)))
        sm = np.zeros((B, H, T), F)
        for u in range(T):
            sm = np.where(self.vis[None, None, :, u], sm + e[..., u], sm)
        w = np.where(vis, e / sm[..., None], Z).astype(F)
        o = np.zeros((B, H, T, d), F)
        for u in range(T):
            o = np.where(self.vis[None, None, :, u, None], o + w[..., u, None] * Vv[:, :, None, u, :], o)
        return o.transpose(0, 2, 1, 3).reshape(B * T, H * d), (Q, K, Vv, w)

    def attention_backward(self, do, cache, B):
        """A.9a / A.8 for each (b, c); then the per-head buffers added into fresh dq, dk, dv in
        ascending (b, c): a kv head's gradient is +0 plus its r query heads' terms in ascending c."""
        k = self.k; T, H, G, d, r = k["Pmax"], k["H"], k["G"], k["d"], k["r"]
        Q, K, Vv, a = cache
        D = do.reshape(B, T, H, d).transpose(0, 2, 1, 3)    # B,H,T,d: d_t
        datt = np.zeros((B, H, T, T), F)                    # [t, u] = sum_e v_u[e] * d_t[e]
        for e in range(d):
            datt = datt + Vv[:, :, None, :, e] * D[:, :, :, None, e]
        dv = np.zeros((B, H, T, d), F)                      # dv_u = sum_{t >= u asc} a_t[u] * d_t
        for t in range(T):
            dv = np.where(self.vis[t][None, None, :, None], dv + a[:, :, t, :, None] * D[:, :, t, None, :], dv)
        dot = np.zeros((B, H, T), F)                        # dot_t = sum_{u <= t asc} a_t[u] * datt[u]
        for u in range(T):
            dot = np.where(self.vis[None, None, :, u], dot + a[..., u] * datt[..., u], dot)
        dpre = a * (datt - dot[..., None])
        g = dpre * self.scale
        dq = np.zeros((B, H, T, d), F)                      # dq_t = sum_{u <= t asc} k_u * g_{t,u}
        for u in range(T):
            dq = np.where(self.vis[None, None, :, u, None], dq + K[:, :, None, u, :] * g[:, :, :, u, None], dq)
        dk = np.zeros((B, H, T, d), F)                      # dk_u = sum_{t >= u asc} q_t * g_{t,u}
        for t in range(T):
            dk = np.where(self.vis[t][None, None, :, None], dk + Q[:, :, t, None, :] * g[:, :, t, :, None], dk)
        dQ = Z + dq.transpose(0, 2, 1, 3)                   # B,T,H,d
        dK = np.zeros((B, T, G, d), F); dV = np.zeros((B, T, G, d), F)
        for c in range(H):
            dK[:, :, c // r] = dK[:, :, c // r] + dk[:, c]
            dV[:, :, c // r] = dV[:, :, c // r] + dv[:, c]
        return dQ.reshape(B * T, H, d), dK.reshape(B * T, G, d), dV.reshape(B * T, G * d)

    def forward(self, P, toks):
        k = self.k
        B, T = toks.shape
        BT = B * T
        H, G, d, eps = k["H"], k["G"], k["d"], k["eps"]
        tpos = np.tile(np.arange(T), B)
        cos, sin = self.cos[tpos], self.sin[tpos]
        x = P["model.embed_tokens.weight"][toks.reshape(-1)].copy()
        layers = []
        for l in range(k["L"]):
            p = "model.layers.%d." % l
            a, ra = rmsnorm(x, P[p + "input_layernorm.weight"], eps)
            q = rope_fwd(linear(a, P[p + "self_attn.q_proj.weight"]).reshape(BT, H, d), cos, sin)
            kk = rope_fwd(linear(a, P[p + "self_attn.k_proj.weight"]).reshape(BT, G, d), cos, sin)
            v = linear(a, P[p + "self_attn.v_proj.weight"]).reshape(BT, G, d)
            o, acache = self.attention(q, kk, v, B)
            xm = x + linear(o, P[p + "self_attn.o_proj.weight"])
            bn, rb = rmsnorm(xm, P[p + "post_attention_layernorm.weight"], eps)
            gate = linear(bn, P[p + "mlp.gate_proj.weight"])
            up = linear(bn, P[p + "mlp.up_proj.weight"])
            m = silu(gate) * up
            xo = xm + linear(m, P[p + "mlp.down_proj.weight"])
            layers.append(dict(x=x, a=a, ra=ra, acache=acache, o=o, xm=xm, bn=bn, rb=rb, gate=gate, up=up, m=m))
            x = xo
        f, rf = rmsnorm(x, P["model.norm.weight"], eps)
        head = P["model.embed_tokens.weight"] if k["tied"] else P["lm_head.weight"]
        return linear(f, head), (layers, x, f, rf, cos, sin)

    def loss_grad(self, P, inputs, targets):
        """A.9a: the forward pass, A.7's loss and dlogits (every position scored), the backward."""
        k = self.k
        B, T = inputs.shape
        BT = B * T
        logits, (layers, xL, f, rf, cos, sin) = self.forward(P, inputs)
        tg = targets.reshape(-1)
        Pr = softmax_rows(logits)
        n = F(BT)
        nl = -logf(Pr[np.arange(BT), tg])
        acc = Z
        for i in range(BT):
            acc = F(acc + nl[i])
        loss = F(acc / n)
        ind = np.zeros_like(Pr); ind[np.arange(BT), tg] = F(1)
        dlogits = (Pr - ind) / n
        G = {}
        emb = "model.embed_tokens.weight"
        hname = emb if k["tied"] else "lm_head.weight"
        df, G[hname] = linear_backward(dlogits, f, P[hname], None, None)
        dx = np.zeros((BT, k["h"]), F)
        dx, G["model.norm.weight"] = rmsnorm_backward(df, xL, rf, P["model.norm.weight"], dx)
        H, Gk, d = k["H"], k["G"], k["d"]
        for l in range(k["L"] - 1, -1, -1):
            p = "model.layers.%d." % l
            c = layers[l]
            dm, G[p + "mlp.down_proj.weight"] = linear_backward(dx, c["m"], P[p + "mlp.down_proj.weight"], None, None)
            gate, up = c["gate"], c["up"]
            sg = F(1) / (F(1) + expf(-gate))
            dup = dm * silu(gate)
            dgate = (dm * up) * (sg * (F(1) + gate * (F(1) - sg)))
            db, G[p + "mlp.gate_proj.weight"] = linear_backward(dgate, c["bn"], P[p + "mlp.gate_proj.weight"], None, None)
            db, G[p + "mlp.up_proj.weight"] = linear_backward(dup, c["bn"], P[p + "mlp.up_proj.weight"], db, None)
            dx, G[p + "post_attention_layernorm.weight"] = rmsnorm_backward(
                db, c["xm"], c["rb"], P[p + "post_attention_layernorm.weight"], dx)
            do, G[p + "self_attn.o_proj.weight"] = linear_backward(dx, c["o"], P[p + "self_attn.o_proj.weight"], None, None)
            dq, dk, dv = self.attention_backward(do, c["acache"], B)
            dq = rope_bwd(dq, cos, sin).reshape(BT, H * d)
            dk = rope_bwd(dk, cos, sin).reshape(BT, Gk * d)
            da, G[p + "self_attn.q_proj.weight"] = linear_backward(dq, c["a"], P[p + "self_attn.q_proj.weight"], None, None)
            da, G[p + "self_attn.k_proj.weight"] = linear_backward(dk, c["a"], P[p + "self_attn.k_proj.weight"], da, None)
            da, G[p + "self_attn.v_proj.weight"] = linear_backward(dv, c["a"], P[p + "self_attn.v_proj.weight"], da, None)
            dx, G[p + "input_layernorm.weight"] = rmsnorm_backward(
                da, c["x"], c["ra"], P[p + "input_layernorm.weight"], dx)
        ge = G[emb] if k["tied"] else np.zeros_like(P[emb])
        toks = inputs.reshape(-1)
        for i in range(BT):
            ge[toks[i]] = ge[toks[i]] + dx[i]
        G[emb] = ge
        return loss, G, logits


# ---------- the task (11.12; sections 3, 4, 5) ----------
def train(task, blobs, check_forward=False):
    w = task["workload"]; seed = task["seed"]
    k = llama.config(w["model"]); opt = w["optimizer"]
    steps, ck, B = w["steps"], w["checkpoint_interval"], w["batch_size"]
    names = llama.shapes(k)
    if w.get("initial_weights"):
        wt = st_parse(blobs[w["initial_weights"]])
        P = {n: wt[n].astype(F).reshape(s) for n, s in names.items()}
    else:
        P = llama.init_params(k, seed)
    M = {n: np.zeros_like(p) for n, p in P.items()}
    Vs = {n: np.zeros_like(p) for n, p in P.items()} if opt["optimizer"] == "adamw" else None
    toks = st_parse(blobs[w["dataset"]["id"]])["tokens"].astype(np.int64)
    T = k["Pmax"]
    nrows = len(toks) - T
    tr = Trainer(k)
    ckpts = [{"step": 0, "state_hash": b3(state_bytes(P, M, Vs, 0))}]
    seg = []
    for step in range(steps):
        bs = compute_stream(seed, step, 0, "batch")
        starts = [bs.uniform_below(nrows) for _ in range(B)]
        inp = np.array([toks[s:s + T] for s in starts])
        tgt = np.array([toks[s + 1:s + T + 1] for s in starts])
        loss, G, logits = tr.loss_grad(P, inp, tgt)
        if check_forward:
            mdl = llama.Model(k, P)
            for b in range(B):
                ref = mdl.forward(mdl.new_cache(), [int(t) for t in inp[b]])
                assert ref.tobytes() == logits[b * T:(b + 1) * T].tobytes(), "forward differs from llama.py"
        if not np.isfinite(loss):
            raise ValueError("loss")
        seg.append(loss)
        opt_step(P, G, M, Vs, opt, step)
        if (step + 1) % ck == 0 or step + 1 == steps:
            acc = Z
            for s in seg:
                acc = F(acc + s)
            sl = F(acc / F(len(seg)))
            if not np.isfinite(sl):
                raise ValueError("loss")  # COMPUTE 5: a segment whose mean overflows diverged
            seg = []
            ckpts.append({"step": step + 1, "segment_loss_bits": "%08x" % fbits(sl),
                          "state_hash": b3(state_bytes(P, M, Vs, step + 1))})
    return ckpts, [b3(weights_bytes(P))]


def check(path=VECTOR, verbose=True, check_forward=False):
    """Returns a list of (field, ok): every checkpoint of every case, then its outputs."""
    res = []
    for v in json.load(open(path))["vectors"]:
        blobs = {kk: bytes.fromhex(b) for kk, b in v.get("blobs", {}).items()}
        got, outputs = train(v["task"], blobs, check_forward)
        want = v["checkpoints"]
        for j, e in enumerate(want):
            a = got[j] if j < len(got) else {}
            ok = all(a.get(key) == e.get(key) for key in e)
            res.append(("%s step %d" % (v["name"], e["step"]), ok))
            if verbose and not ok:
                print("  got ", a, "\n  want", e)
        res.append(("%s outputs" % v["name"], outputs == v["outputs"]))
    return res


if __name__ == "__main__":
    bad = 0
    for f, ok in check(check_forward="--forward" in sys.argv):
        print("%-44s %s" % (f, "ok" if ok else "MISMATCH"))
        bad += not ok
    sys.exit(1 if bad else 0)
