"""Sensitivity of compute-llama-train.json: change one rule of A.9a (or of the step around it) in
llama_train.py's source and count the fields of the vector that notice. A rule the vector does
not notice is one a port could break and still pass. `python3 llama_train_exp.py [name...]`."""
import os, sys, types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
SRC = open(os.path.join(HERE, "llama_train.py")).read()

# name: [(old, new), ...] applied to llama_train.py's source (each old must occur)
EXPS = {
    "baseline": [],
    # the order of the terms summed into one buffer
    "swiglu_db_up_before_gate": [
        ('db, G[p + "mlp.gate_proj.weight"] = linear_backward(dgate, c["bn"], P[p + "mlp.gate_proj.weight"], None, None)\n'
         '            db, G[p + "mlp.up_proj.weight"] = linear_backward(dup, c["bn"], P[p + "mlp.up_proj.weight"], db, None)',
         'db, G[p + "mlp.up_proj.weight"] = linear_backward(dup, c["bn"], P[p + "mlp.up_proj.weight"], None, None)\n'
         '            db, G[p + "mlp.gate_proj.weight"] = linear_backward(dgate, c["bn"], P[p + "mlp.gate_proj.weight"], db, None)')],
    "da_order_v_k_q": [
        ('da, G[p + "self_attn.q_proj.weight"] = linear_backward(dq, c["a"], P[p + "self_attn.q_proj.weight"], None, None)\n'
         '            da, G[p + "self_attn.k_proj.weight"] = linear_backward(dk, c["a"], P[p + "self_attn.k_proj.weight"], da, None)\n'
         '            da, G[p + "self_attn.v_proj.weight"] = linear_backward(dv, c["a"], P[p + "self_attn.v_proj.weight"], da, None)',
         'da, G[p + "self_attn.v_proj.weight"] = linear_backward(dv, c["a"], P[p + "self_attn.v_proj.weight"], None, None)\n'
         '            da, G[p + "self_attn.k_proj.weight"] = linear_backward(dk, c["a"], P[p + "self_attn.k_proj.weight"], da, None)\n'
         '            da, G[p + "self_attn.q_proj.weight"] = linear_backward(dq, c["a"], P[p + "self_attn.q_proj.weight"], da, None)')],
    "linear_dx_terms_added_one_by_one": [   # dx += dy*W term by term instead of the sum added once
        ("    acc = np.zeros((R, inn), F)\n    for o in range(out):\n        acc = acc + dy[:, o:o + 1] * W[None, o, :]\n"
         "    dx = (np.zeros((R, inn), F) if dx is None else dx) + acc",
         "    dx = np.zeros((R, inn), F) if dx is None else dx\n    for o in range(out):\n        dx = dx + dy[:, o:o + 1] * W[None, o, :]")],
    "tied_head_term_added_last": [
        ('ge = G[emb] if k["tied"] else np.zeros_like(P[emb])', 'ge = np.zeros_like(P[emb])'),
        ("        G[emb] = ge\n", "        G[emb] = (ge + G[emb]) if k['tied'] else ge\n")],
    "kv_heads_summed_descending_c": [("for c in range(H):\n            dK", "for c in reversed(range(H)):\n            dK")],
    "kv_heads_rotated_before_sum": [   # rope backward per query head, then the r heads summed
        ("        dQ = Z + dq.transpose(0, 2, 1, 3)",
         "        cs, sn = self.cos[np.tile(np.arange(T), B)].reshape(B, T, -1), self.sin[np.tile(np.arange(T), B)].reshape(B, T, -1)\n"
         "        h2 = d // 2\n"
         "        a_, b_ = dk[..., :h2], dk[..., h2:]\n"
         "        c_, s_ = cs[:, None], sn[:, None]\n"
         "        dk = np.concatenate([(a_ * c_) + (b_ * s_), (b_ * c_) - (a_ * s_)], axis=3)\n"
         "        dQ = Z + dq.transpose(0, 2, 1, 3)"),
        ("dk = rope_bwd(dk, cos, sin).reshape(BT, Gk * d)", "dk = dk.reshape(BT, Gk * d)")],
    # groupings inside one rule
    "rms_dx_r_distributed": [("dx = dx + r[:, None] * (dyw - xr * mean[:, None])",
                              "dx = dx + ((r[:, None] * dyw) - (r[:, None] * (xr * mean[:, None])))")],
    "rms_dx_r_times_x_times_mean": [("dx = dx + r[:, None] * (dyw - xr * mean[:, None])",
                                     "dx = dx + r[:, None] * (dyw - x * (r * mean)[:, None])")],
    "rms_mean_mul_reciprocal": [("mean = dot / F(n)", "mean = dot * (F(1) / F(n))")],
    "rms_dot_dy_times_wxr": [("dot = dot + dyw[:, j] * xr[:, j]", "dot = dot + dy[:, j] * (w[j] * xr[:, j])")],
    "rms_dw_dyx_then_r": [("accw = accw + dy[i] * xr[i]", "accw = accw + (dy[i] * x[i]) * r[i]")],
    "swiglu_dup_gate_times_sigma": [("dup = dm * silu(gate)", "dup = dm * (gate * sg)")],
    "swiglu_dgate_grouping": [("dgate = (dm * up) * (sg * (F(1) + gate * (F(1) - sg)))",
                               "dgate = dm * (up * (sg * (F(1) + gate * (F(1) - sg))))")],
    "swiglu_dgate_expanded": [("dgate = (dm * up) * (sg * (F(1) + gate * (F(1) - sg)))",
                               "dgate = (dm * up) * (sg + (gate * sg) * (F(1) - sg))")],
    "attn_scale_after_dq_sum": [("g = dpre * self.scale", "g = dpre"),
                                ("dQ = Z + dq.transpose", "dq = dq * self.scale; dk = dk * self.scale\n        dQ = Z + dq.transpose")],
    "rope_bwd_sign_swapped": [("np.concatenate([(a * c) + (b * s), (b * c) - (a * s)], axis=2)",
                               "np.concatenate([(a * c) - (b * s), (b * c) + (a * s)], axis=2)")],
    "ce_grad_mul_reciprocal": [("dlogits = (Pr - ind) / n", "dlogits = (Pr - ind) * (F(1) / n)")],
    "no_plus_zero_fresh_dq": [("dQ = Z + dq.transpose", "dQ = dq.transpose")],
    # section 4 around the step
    "weight_decay_on_norm_gains": [("        opt_step(P, G, M, Vs, opt, step)\n",
        "        _sh = {n: p.shape for n, p in P.items()}\n"
        "        _ds = [P, G, M] + ([Vs] if Vs is not None else [])\n"
        "        for _d in _ds:\n"
        "            for n in _d: _d[n] = _d[n].reshape(1, -1) if _d[n].ndim == 1 else _d[n]\n"
        "        opt_step(P, G, M, Vs, opt, step)\n"
        "        for _d in _ds:\n"
        "            for n in _d: _d[n] = _d[n].reshape(_sh[n])\n")],
}


def run(name):
    src = SRC
    for old, new in EXPS[name]:
        assert old in src, (name, old)
        src = src.replace(old, new)
    mod = types.ModuleType("llama_train_mut")
    mod.__file__ = os.path.join(HERE, "llama_train.py")
    exec(compile(src, "llama_train_mut", "exec"), mod.__dict__)
    res = mod.check(verbose=False)
    return sum(not ok for _, ok in res), len(res), [f for f, ok in res if not ok]


if __name__ == "__main__":
    for name in sys.argv[1:] or EXPS:
        bad, tot, which = run(name)
        print("%-36s %2d/%d fields differ  %s" % (name, bad, tot, ", ".join(which[:2]) + (" ..." if len(which) > 2 else "")))
