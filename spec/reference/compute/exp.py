"""Sensitivity: does each vector file pin a given rule?  Monkeypatch one rule, count vector mismatches."""
import sys, json, io, contextlib, importlib, os
import numpy as np
import repro, model, run
F = np.float32
V = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'vectors') + os.sep

def check_train():
    bad = 0; tot = 0
    for fn in ['compute-cases.json', 'compute-mlp.json']:
        for v in json.load(open(V + fn))['vectors']:
            blobs = {k: bytes.fromhex(b) for k, b in v.get('blobs', {}).items()}
            with contextlib.redirect_stdout(io.StringIO()):
                ck, outs = run.train(v['task'], blobs)
            for a, e in zip(ck, v['checkpoints']):
                tot += 1; bad += any(a.get(k) != e.get(k) for k in e)
            if 'outputs' in v: tot += 1; bad += outs != v['outputs']
    return '%d/%d train mismatches' % (bad, tot)

def check_inf():
    import infer_lib
    return infer_lib.check()

EXPS = {}
def exp(f): EXPS[f.__name__] = f; return f

@exp
def baseline(): pass

@exp
def no_plus_zero_in_linear_backward():
    orig = model.linear_backward
    def lb(dy, x, w, need_dx=True):
        M, N = dy.shape; K = x.shape[1]
        dx = None
        if need_dx:
            acc = dy[:, 0:1] * w[None, :, 0]
            for n in range(1, N): acc = acc + dy[:, n:n+1] * w[None, :, n]
            dx = acc
        acc = x[0][:, None] * dy[0][None, :]
        for m in range(1, M): acc = acc + x[m][:, None] * dy[m][None, :]
        dw = acc
        acc = dy[0].copy()
        for m in range(1, M): acc = acc + dy[m]
        return dx, dw, acc
    model.linear_backward = lb

@exp
def glibc_transcendentals():
    model.expf = lambda x: np.exp(np.asarray(x, F)).astype(F)
    model.logf = lambda x: np.log(np.asarray(x, F)).astype(F)
    model.tanhf = lambda x: np.tanh(np.asarray(x, F)).astype(F)
    run.tanhf = model.tanhf

@exp
def double_precision_transcendentals():
    model.expf = lambda x: np.exp(np.asarray(x, np.float64)).astype(F)
    model.logf = lambda x: np.log(np.asarray(x, np.float64)).astype(F)
    model.tanhf = lambda x: np.tanh(np.asarray(x, np.float64)).astype(F)
    run.tanhf = model.tanhf

@exp
def softmax_mul_reciprocal():
    o = model.softmax_rows
    def sm(s):
        n = s.shape[-1]
        mx = np.max(s, axis=-1)
        e = model.expf(s - mx[..., None])
        t = np.zeros(s.shape[:-1], F)
        for j in range(n): t = t + e[..., j]
        return e * (F(1) / t)[..., None]
    model.softmax_rows = sm

@exp
def adam_bias_correction_reciprocal():
    o = model.opt_step
    def step(P, G, M, Vs, opt, st):
        if opt['optimizer'] != 'adamw': return o(P, G, M, Vs, opt, st)
        t = st + 1; dec = repro.dec_to_f32
        wd0 = dec(opt['weight_decay']); lr = dec(opt['lr']); b1 = dec(opt['beta1']); b2 = dec(opt['beta2']); eps = dec(opt['eps'])
        c1 = F(1) - model.powi(b1, t); c2 = F(1) - model.powi(b2, t)
        for n in P:
            p = P[n]; g = G[n]; wd = wd0 if p.ndim >= 2 else F(0)
            m = b1 * M[n] + (F(1) - b1) * g; v = b2 * Vs[n] + ((F(1) - b2) * g) * g
            P[n] = p - lr * ((m * (F(1) / c1)) / (np.sqrt(v * (F(1) / c2)) + eps) + wd * p); M[n] = m; Vs[n] = v
    model.opt_step = step; run.opt_step = step

@exp
def adam_pow_float64():
    model.powi = lambda x, n: F(float(x) ** n)

@exp
def weight_decay_on_all_tensors():
    o = model.opt_step
    def step(P, G, M, Vs, opt, st):
        # emulate wd on rank-1 by temporarily reshaping to 2D
        P2 = {k: (v.reshape(1, -1) if v.ndim == 1 else v) for k, v in P.items()}
        G2 = {k: G[k].reshape(P2[k].shape) for k in P}
        M2 = {k: M[k].reshape(P2[k].shape) for k in P}
        V2 = None if Vs is None else {k: Vs[k].reshape(P2[k].shape) for k in P}
        o(P2, G2, M2, V2, opt, st)
        for k in P:
            P[k] = P2[k].reshape(P[k].shape); M[k] = M2[k].reshape(P[k].shape)
            if Vs is not None: Vs[k] = V2[k].reshape(P[k].shape)
    model.opt_step = step; run.opt_step = step

@exp
def skip_zero_wd_product_for_biases():
    o = model.opt_step
    def step(P, G, M, Vs, opt, st):
        if opt['optimizer'] != 'adamw':
            lr = repro.dec_to_f32(opt['lr']); mom = repro.dec_to_f32(opt['momentum']); wd0 = repro.dec_to_f32(opt['weight_decay'])
            for n in P:
                p = P[n]; g = G[n]
                g2 = g + wd0 * p if p.ndim >= 2 else g
                M[n] = mom * M[n] + g2; P[n] = p - lr * M[n]
            return
        return o(P, G, M, Vs, opt, st)
    model.opt_step = step; run.opt_step = step

@exp
def relu_grad_at_zero_is_one():
    o = model.act_g
    model.act_g = lambda name, z: np.where(z >= 0, F(1), F(0)).astype(F) if name == 'relu' else o(name, z)

@exp
def layernorm_mul_by_reciprocal_C():
    o = model.layernorm
    def ln(x, w, b):
        R, C = x.shape; ic = F(1) / F(C)
        s = np.zeros(R, F)
        for i in range(C): s = s + x[:, i]
        mean = s * ic
        s = np.zeros(R, F)
        for i in range(C): d = x[:, i] - mean; s = s + d * d
        var = s * ic
        rstd = F(1) / np.sqrt(var + model.EPS)
        return (((x - mean[:, None]) * rstd[:, None]) * w[None, :]) + b[None, :], mean, rstd
    model.layernorm = ln

@exp
def ce_grad_mul_reciprocal():
    o = model.gpt_loss_grad
    src = open(model.__file__).read()
    # patch: (Pr - ind) / n  -> (Pr - ind) * (1/n)
    ns = {}
    code = src[src.index('def gpt_loss_grad'):src.index('# ---------- mlp')].replace('(Pr - ind) / n', '(Pr - ind) * (F(1) / n)')
    exec(code, model.__dict__)
    run.gpt_loss_grad = model.gpt_loss_grad

@exp
def mse_grad_mul_first():
    src = open(model.__file__).read()
    code = src[src.index('def mlp_loss_grad'):src.index('# ---------- optimizers')].replace('((F(2) * d) / N)', '(F(2) * (d / N))')
    exec(code, model.__dict__); run.mlp_loss_grad = model.mlp_loss_grad

@exp
def attention_scale_on_q():
    src = open(model.__file__).read()
    code = src[src.index('def attention_forward'):src.index('def attention_backward')]
    code = code.replace("s = s + q[:, :, :, None, e] * k[:, :, None, :, e]\n    s = s * scale", "s = s + (q[:, :, :, None, e] * scale) * k[:, :, None, :, e]")
    exec(code, model.__dict__)

@exp
def teacher_pairwise_sum():
    def td(seed, Fn, O, R):
        st = repro.compute_stream(seed, 0, 0, 'teacher')
        s1 = F(F(2) / np.sqrt(F(Fn)))
        W1 = np.array([st.symmetric(s1) for _ in range(Fn * 16)], F).reshape(Fn, 16)
        b1 = np.array([st.symmetric(F(0.5)) for _ in range(16)], F)
        W2 = np.array([st.symmetric(F(0.5)) for _ in range(16 * O)], F).reshape(16, O)
        sd = repro.compute_stream(seed, 0, 0, 'data')
        x = np.array([sd.symmetric(F(1.0)) for _ in range(R * Fn)], F).reshape(R, Fn)
        h = model.tanhf((x @ W1) + b1[None, :]); return x, h @ W2
    run.teacher_data = td

@exp
def batch_lane_1():
    o = repro.compute_stream
    def cs(seed, i, i2, p): return o(seed, i, 1 if p == 'batch' else i2, p)
    run.compute_stream = cs


@exp
def only_tanhf_float64():
    model.tanhf = lambda x: np.tanh(np.asarray(x, np.float64)).astype(F); run.tanhf = model.tanhf
@exp
def only_expf_float64():
    model.expf = lambda x: np.exp(np.asarray(x, np.float64)).astype(F)
@exp
def only_logf_float64():
    model.logf = lambda x: np.log(np.asarray(x, np.float64)).astype(F)
@exp
def sample_stream_index_swap():
    import infer_lib
    o = infer_lib.compute_stream
    infer_lib.compute_stream = lambda s, a, b, p: o(s, b, a, p)
@exp
def sample_stream_index2_is_position():
    import infer_lib
    src = open(infer_lib.__file__).read()
    exec(src.replace("compute_stream(seed, it, n, 'sample')", "compute_stream(seed, it, len(toks), 'sample')").split("def check(")[0], infer_lib.__dict__)
@exp
def sample_softmax_before_topk():
    import infer_lib
    src = open(infer_lib.__file__).read()
    src = src.replace("order = order[:kk]\n                    s = np.array([lg[o] for o in order], F) / temp\n                    p = model.softmax_rows(s[None, :])[0]",
                      "pall = model.softmax_rows((np.array([lg[o] for o in order], F) / temp)[None, :])[0]\n                    order = order[:kk]; p = pall[:kk]")
    assert 'pall' in src
    exec(src.split("def check(")[0], infer_lib.__dict__)
@exp
def init_bound_divide_by_sqrt():
    src = open(model.__file__).read()
    code = src[src.index('def init_params'):src.index('# ---------- kernels')].replace("bound = F(a * scale)", "bound = F(a / F(np.sqrt(F(2 * cfg['layers']))))")
    exec(code, model.__dict__)

if __name__ == '__main__':
    name = sys.argv[1]
    EXPS[name]()
    print('%-40s %s | %s' % (name, check_train(), check_inf()), flush=True)
