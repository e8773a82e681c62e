import numpy as np
from repro import *

F = np.float32
Z = F(0.0)

def gpt_shapes(cfg):
    L, C, V, T = cfg['layers'], cfg['width'], cfg['vocab'], cfg['context']
    s = {'wte': [V, C], 'wpe': [T, C], 'lnf.w': [C], 'lnf.b': [C], 'head.w': [C, V]}
    for l in range(L):
        p = 'h%02d.' % l
        s.update({p+'ln1.w': [C], p+'ln1.b': [C], p+'attn.qkv.w': [C, 3*C], p+'attn.qkv.b': [3*C],
                  p+'attn.proj.w': [C, C], p+'attn.proj.b': [C], p+'ln2.w': [C], p+'ln2.b': [C],
                  p+'mlp.fc.w': [C, 4*C], p+'mlp.fc.b': [4*C], p+'mlp.proj.w': [4*C, C], p+'mlp.proj.b': [C]})
    return s

def mlp_shapes(cfg):
    w = cfg['widths']; s = {}
    for i in range(len(w) - 1):
        s['l%02d.w' % i] = [w[i], w[i+1]]; s['l%02d.b' % i] = [w[i+1]]
    return s

def shapes(cfg):
    s = gpt_shapes(cfg) if cfg['model'] == 'gpt' else mlp_shapes(cfg)
    return {k: s[k] for k in sorted(s, key=lambda k: k.encode())}

def init_params(cfg, seed):
    sh = shapes(cfg)
    st = compute_stream(seed, 0, 0, 'init')
    params = {}
    for name, shape in sh.items():
        n = int(np.prod(shape))
        if cfg['model'] == 'gpt' and name.endswith(('ln1.w', 'ln2.w', 'lnf.w')):
            params[name] = np.ones(shape, F); continue
        if name.endswith('.b'):
            params[name] = np.zeros(shape, F); continue
        if cfg['model'] == 'gpt':
            a = F(F(0.02) * F(1.7320508))
            if name.endswith('proj.w'):
                scale = F(F(1) / F(np.sqrt(F(2 * cfg['layers']))))
                bound = F(a * scale)
            else:
                bound = F(a * F(1.0))
        else:
            fi, fo = shape
            bound = F(np.sqrt(F(F(6) / F(fi + fo))))
        vals = np.empty(n, F)
        for i in range(n):
            vals[i] = st.symmetric(bound)
        params[name] = vals.reshape(shape)
    return params

# ---------- kernels ----------
def seqsum_axis(terms_fn, K, shape):
    acc = np.zeros(shape, F)
    for k in range(K):
        acc = acc + terms_fn(k)
    return acc

def matmul(A, W):
    M, K = A.shape; N = W.shape[1]
    acc = np.zeros((M, N), F)
    for k in range(K):
        acc = acc + A[:, k:k+1] * W[k:k+1, :]
    return acc

def linear(A, W, b):
    y = matmul(A, W)
    return y + b[None, :] if b is not None else y

def linear_backward(dy, x, w, need_dx=True):
    M, N = dy.shape; K = x.shape[1]
    dx = None
    if need_dx:
        acc = np.zeros((M, K), F)
        for n in range(N):
            acc = acc + dy[:, n:n+1] * w[None, :, n]
        dx = F(0) + acc
    acc = np.zeros((K, N), F)
    for m in range(M):
        acc = acc + x[m][:, None] * dy[m][None, :]
    dw = F(0) + acc
    acc = np.zeros(N, F)
    for m in range(M):
        acc = acc + dy[m]
    db = F(0) + acc
    return dx, dw, db

EPS = F(1e-5)
assert fbits(EPS) == 0x3727c5ac

def layernorm(x, w, b):
    R, C = x.shape
    s = np.zeros(R, F)
    for i in range(C): s = s + x[:, i]
    mean = s / F(C)
    s = np.zeros(R, F)
    for i in range(C):
        d = x[:, i] - mean; s = s + d * d
    var = s / F(C)
    rstd = F(1) / np.sqrt(var + EPS)
    out = (((x - mean[:, None]) * rstd[:, None]) * w[None, :]) + b[None, :]
    return out, mean, rstd

def layernorm_backward(dx, dout, x, mean, rstd, w):
    R, C = x.shape
    norm = (x - mean[:, None]) * rstd[:, None]
    dnorm = w[None, :] * dout
    sa = np.zeros(R, F); sc = np.zeros(R, F)
    for i in range(C):
        sa = sa + dnorm[:, i]; sc = sc + dnorm[:, i] * norm[:, i]
    a = sa / F(C); c = sc / F(C)
    dx = dx + ((dnorm - a[:, None]) - (norm * c[:, None])) * rstd[:, None]
    acc_w = np.zeros(C, F); acc_b = np.zeros(C, F)
    for r in range(R):
        acc_w = acc_w + norm[r] * dout[r]; acc_b = acc_b + dout[r]
    return dx, F(0) + acc_w, F(0) + acc_b

G_A = F(0.044715); G_S = F(0.7978846); G_3A = ffrom(0x3e095d4e)
assert fbits(G_A) == 0x3d372713 and fbits(G_S) == 0x3f4c422a

def gelu(x):
    u = ((G_A * x) * x) * x
    th = tanhf(G_S * (x + u))
    return (F(0.5) * x) * (F(1) + th)

def gelu_grad(x):
    u = ((G_A * x) * x) * x
    th = tanhf(G_S * (x + u))
    sech2 = F(1) - (th * th)
    return (F(0.5) * (F(1) + th)) + ((((x * F(0.5)) * sech2) * G_S) * (F(1) + ((G_3A * x) * x)))

def softmax_rows(s):
    """s: [..., n]; sequential max scan and sum"""
    n = s.shape[-1]
    mx = np.full(s.shape[:-1], -np.inf, F)
    for j in range(n):
        mx = np.where(s[..., j] > mx, s[..., j], mx)
    e = expf(s - mx[..., None])
    sm = np.zeros(s.shape[:-1], F)
    for j in range(n): sm = sm + e[..., j]
    return e / sm[..., None]

# ---------- attention ----------
def attention_forward(qkv, B, T, C, H):
    hs = C // H
    x = qkv.reshape(B, T, 3, H, hs)
    q = x[:, :, 0].transpose(0, 2, 1, 3)  # B,H,T,hs
    k = x[:, :, 1].transpose(0, 2, 1, 3)
    v = x[:, :, 2].transpose(0, 2, 1, 3)
    scale = F(F(1) / np.sqrt(F(hs)))
    s = np.zeros((B, H, T, T), F)
    for e in range(hs):
        s = s + q[:, :, :, None, e] * k[:, :, None, :, e]
    s = s * scale
    tt = np.arange(T)
    vis = tt[None, :] <= tt[:, None]   # [t,u]
    mx = np.full((B, H, T), -np.inf, F)
    for u in range(T):
        cond = (s[..., u] > mx) & vis[None, None, :, u]
        mx = np.where(cond, s[..., u], mx)
    ex = expf(s - mx[..., None])
    sm = np.zeros((B, H, T), F)
    for u in range(T):
        sm = np.where(vis[None, None, :, u], sm + ex[..., u], sm)
    a = np.where(vis[None, None], ex / sm[..., None], F(0))
    out = np.zeros((B, H, T, hs), F)
    for u in range(T):
        out = np.where(vis[None, None, :, u, None], out + a[..., u, None] * v[:, :, None, u, :], out)
    atty = out.transpose(0, 2, 1, 3).reshape(B * T, C)
    return atty, (q, k, v, a, scale, vis)

def attention_backward(d_atty, cache, B, T, C, H):
    q, k, v, a, scale, vis = cache
    hs = C // H
    d = d_atty.reshape(B, T, H, hs).transpose(0, 2, 1, 3)  # B,H,T,hs
    datt = np.zeros((B, H, T, T), F)  # [t,u]
    for e in range(hs):
        datt = datt + v[:, :, None, :, e] * d[:, :, :, None, e]
    dv = np.zeros((B, H, T, hs), F)
    for t in range(T):  # dv_u += a_t[u] d_t, t ascending, t>=u
        cond = vis[t][None, None, :, None]  # u<=t
        dv = np.where(cond, dv + a[:, :, t, :, None] * d[:, :, t, None, :], dv)
    dot = np.zeros((B, H, T), F)
    for u in range(T):
        dot = np.where(vis[None, None, :, u], dot + a[..., u] * datt[..., u], dot)
    dpre = a * (datt - dot[..., None])
    g = dpre * scale
    dq = np.zeros((B, H, T, hs), F)
    for u in range(T):
        dq = np.where(vis[None, None, :, u, None], dq + k[:, :, None, u, :] * g[:, :, :, u, None], dq)
    dk = np.zeros((B, H, T, hs), F)
    for t in range(T):
        cond = vis[t][None, None, :, None]
        dk = np.where(cond, dk + q[:, :, t, None, :] * g[:, :, t, :, None], dk)
    dqkv = np.zeros((B, T, 3, H, hs), F)
    dqkv[:, :, 0] = F(0) + dq.transpose(0, 2, 1, 3)
    dqkv[:, :, 1] = F(0) + dk.transpose(0, 2, 1, 3)
    dqkv[:, :, 2] = F(0) + dv.transpose(0, 2, 1, 3)
    return dqkv.reshape(B * T, 3 * C)

# ---------- gpt ----------
def gpt_forward(P, cfg, inputs, B, T):
    L, C, H = cfg['layers'], cfg['width'], cfg['heads']
    BT = B * T
    tpos = np.tile(np.arange(T), B)
    x = P['wte'][inputs] + P['wpe'][tpos]
    caches = []
    for l in range(L):
        p = 'h%02d.' % l
        ln1, m1, r1 = layernorm(x, P[p+'ln1.w'], P[p+'ln1.b'])
        qkv = linear(ln1, P[p+'attn.qkv.w'], P[p+'attn.qkv.b'])
        atty, acache = attention_forward(qkv, B, T, C, H)
        xm = linear(atty, P[p+'attn.proj.w'], P[p+'attn.proj.b']) + x
        ln2, m2, r2 = layernorm(xm, P[p+'ln2.w'], P[p+'ln2.b'])
        fch = linear(ln2, P[p+'mlp.fc.w'], P[p+'mlp.fc.b'])
        fg = gelu(fch)
        xo = linear(fg, P[p+'mlp.proj.w'], P[p+'mlp.proj.b']) + xm
        caches.append((x, ln1, m1, r1, atty, acache, xm, ln2, m2, r2, fch, fg))
        x = xo
    lnf, mf, rf = layernorm(x, P['lnf.w'], P['lnf.b'])
    logits = matmul(lnf, P['head.w'])
    return logits, (caches, x, lnf, mf, rf, tpos)

def gpt_loss_grad(P, cfg, inputs, targets, scored, B, T):
    L, C, H, V = cfg['layers'], cfg['width'], cfg['heads'], cfg['vocab']
    logits, (caches, xL, lnf, mf, rf, tpos) = gpt_forward(P, cfg, inputs, B, T)
    BT = B * T
    Pr = softmax_rows(logits)
    nsc = int(scored.sum())
    n = F(nsc) if nsc > 0 else F(1)
    nl = -logf(Pr[np.arange(BT), targets])
    acc = F(0)
    for i in range(BT):
        if scored[i]: acc = F(acc + nl[i])
    loss = F(acc / n)
    ind = np.zeros((BT, V), F); ind[np.arange(BT), targets] = F(1)
    dlogits = np.where(scored[:, None], (Pr - ind) / n, F(0)).astype(F)
    G = {}
    dlnf, G['head.w'], _ = linear_backward(dlogits, lnf, P['head.w'])
    dx = np.zeros((BT, C), F)
    dx, G['lnf.w'], G['lnf.b'] = layernorm_backward(dx, dlnf, xL, mf, rf, P['lnf.w'])
    for l in range(L - 1, -1, -1):
        p = 'h%02d.' % l
        (x, ln1, m1, r1, atty, acache, xm, ln2, m2, r2, fch, fg) = caches[l]
        d_fg, G[p+'mlp.proj.w'], G[p+'mlp.proj.b'] = linear_backward(dx, fg, P[p+'mlp.proj.w'])
        d_fch = d_fg * gelu_grad(fch)
        d_ln2, G[p+'mlp.fc.w'], G[p+'mlp.fc.b'] = linear_backward(d_fch, ln2, P[p+'mlp.fc.w'])
        dx, G[p+'ln2.w'], G[p+'ln2.b'] = layernorm_backward(dx, d_ln2, xm, m2, r2, P[p+'ln2.w'])
        d_atty, G[p+'attn.proj.w'], G[p+'attn.proj.b'] = linear_backward(dx, atty, P[p+'attn.proj.w'])
        dqkv = attention_backward(d_atty, acache, B, T, C, H)
        d_ln1, G[p+'attn.qkv.w'], G[p+'attn.qkv.b'] = linear_backward(dqkv, ln1, P[p+'attn.qkv.w'])
        dx, G[p+'ln1.w'], G[p+'ln1.b'] = layernorm_backward(dx, d_ln1, x, m1, r1, P[p+'ln1.w'])
    gwte = np.zeros_like(P['wte']); gwpe = np.zeros_like(P['wpe'])
    for i in range(BT):
        gwte[inputs[i]] = gwte[inputs[i]] + dx[i]
        gwpe[tpos[i]] = gwpe[tpos[i]] + dx[i]
    G['wte'] = gwte; G['wpe'] = gwpe
    return loss, G

# ---------- mlp ----------
def act_f(name, z):
    if name == 'relu': return np.where(z > 0, z, F(0)).astype(F)
    if name == 'tanh': return tanhf(z)
    if name == 'gelu': return gelu(z)
def act_g(name, z):
    if name == 'relu': return np.where(z > 0, F(1), F(0)).astype(F)
    if name == 'tanh':
        t = tanhf(z); return F(1) - (t * t)
    if name == 'gelu': return gelu_grad(z)

def mlp_forward(P, cfg, x):
    D = len(cfg['widths']) - 1
    hs = [x]; zs = []
    h = x
    for i in range(D):
        z = linear(h, P['l%02d.w' % i], P['l%02d.b' % i]); zs.append(z)
        if i < D - 1:
            h = act_f(cfg['activation'], z); hs.append(h)
    return zs[-1], hs, zs

def mlp_loss_grad(P, cfg, x, y):
    D = len(cfg['widths']) - 1
    out, hs, zs = mlp_forward(P, cfg, x)
    cnt = out.size
    N = F(cnt) if cnt > 0 else F(1)
    d = (out - y).reshape(-1)
    dz = ((F(2) * d) / N).reshape(out.shape)
    acc = F(0)
    for e in range(cnt): acc = F(acc + F(d[e] * d[e]))
    loss = F(acc / N)
    G = {}
    for i in range(D - 1, -1, -1):
        dx, G['l%02d.w' % i], G['l%02d.b' % i] = linear_backward(dz, hs[i], P['l%02d.w' % i], need_dx=(i > 0))
        if i > 0:
            dz = dx * act_g(cfg['activation'], zs[i - 1])
    return loss, G

# ---------- optimizers ----------
def powi(x, n):
    acc = F(1); base = F(x)
    while n > 0:
        if n & 1: acc = F(acc * base)
        base = F(base * base); n >>= 1
    return acc

def opt_step(P, G, M, Vs, opt, step):
    t = step + 1
    wd0 = dec_to_f32(opt.get('weight_decay', '0'))
    lr = dec_to_f32(opt['lr'])
    for name in P:
        p = P[name]; g = G[name]
        wd = wd0 if p.ndim >= 2 else F(0)
        if opt['optimizer'] == 'adamw':
            b1 = dec_to_f32(opt['beta1']); b2 = dec_to_f32(opt['beta2']); eps = dec_to_f32(opt['eps'])
            c1 = F(F(1) - powi(b1, t)); c2 = F(F(1) - powi(b2, t))
            m = (b1 * M[name]) + (F(F(1) - b1) * g)
            v = (b2 * Vs[name]) + ((F(F(1) - b2) * g) * g)
            mh = m / c1; vh = v / c2
            P[name] = p - lr * ((mh / (np.sqrt(vh) + eps)) + (wd * p))
            M[name] = m; Vs[name] = v
        else:
            mom = dec_to_f32(opt['momentum'])
            g2 = g + (wd * p)
            m = (mom * M[name]) + g2
            P[name] = p - (lr * m)
            M[name] = m
        for dct in (P, M) + ((Vs,) if Vs is not None else ()):
            assert dct[name].dtype == F
