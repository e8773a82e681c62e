import sys, json, os
import numpy as np
from repro import *
import model
from model import *
F = np.float32

def merkle(leaves):
    def lh(d): return blake3.blake3(b'\x00' + d).digest()
    def mth(D):
        if len(D) == 0: return blake3.blake3(b'').digest()
        if len(D) == 1: return lh(D[0])
        k = 1
        while k * 2 < len(D): k *= 2
        return blake3.blake3(b'\x01' + mth(D[:k]) + mth(D[k:])).digest()
    return mth(leaves)

CH = {str(i): i for i in range(10)}; CH.update({'+': 10, '=': 11, '\n': 12})
def tok2ch(t): return '0123456789+=\n'[t] if t <= 12 else '?'

def total_key(x):
    b = fbits(x)
    return (b ^ 0xffffffff) if b & 0x80000000 else (b | 0x80000000)

def infer(task, blobs):
    w = task['workload']; seed = task['seed']; cfg = w['model']
    if w.get('weights'):
        wt = st_parse(blobs[w['weights']]); P = {n: wt[n].astype(F) for n in shapes(cfg)}
    else:
        P = init_params(cfg, seed)
    items = []
    if cfg['model'] == 'gpt':
        dec = w['decoding']; inp = w['inputs']
        for it, prompt in enumerate(inp['prompts']):
            toks = [CH[c] for c in prompt]; out = []
            for n in range(inp['max_new_tokens']):
                win = toks[-cfg['context']:]
                T = len(win)
                logits, _ = model.gpt_forward(P, cfg, np.array(win), 1, T)
                lg = logits[T - 1]
                if dec['decoding'] == 'greedy':
                    best = 0
                    for i in range(len(lg)):
                        if lg[i] > lg[best]: best = i
                    ch = best
                else:
                    temp = dec_to_f32(dec['temperature'])
                    V = len(lg)
                    order = sorted(range(V), key=lambda i: (-total_key(lg[i]) if False else 0, ))
                    # descending total order, ties by ascending index
                    order = sorted(range(V), key=lambda i: (-np.int64(total_key(lg[i])), i))
                    kk = dec['top_k'] or V; kk = min(kk, V)
                    order = order[:kk]
                    s = np.array([lg[o] for o in order], F) / temp
                    p = model.softmax_rows(s[None, :])[0]
                    if dec.get('top_p') is not None:
                        # The nucleus: candidates up to the first running sum >= top_p.
                        tp = dec_to_f32(dec['top_p']); acc = F(0)
                        for j in range(kk):
                            acc = F(acc + p[j])
                            if acc >= tp: kk = j + 1; break
                        order = order[:kk]
                        s = np.array([lg[o] for o in order], F) / temp
                        p = model.softmax_rows(s[None, :])[0]
                    u = compute_stream(seed, it, n, 'sample').unit_f32()
                    acc = F(0); ch = order[kk - 1]
                    for j in range(kk):
                        acc = F(acc + p[j])
                        if u < acc: ch = order[j]; break
                toks.append(ch); out.append(ch)
                if ch == 12: break
            items.append(''.join(tok2ch(t) for t in out).encode())
    else:
        x = st_parse(blobs[w['inputs']['id']])['x'].astype(F)
        for r in range(x.shape[0]):
            o, _, _ = model.mlp_forward(P, cfg, x[r:r + 1])
            items.append(f32b(o[0]))
    leaves = [blake3.blake3(b).digest() for b in items]
    return items, leaves, merkle(leaves).hex(), blake3.blake3(b''.join(leaves)).hexdigest()


def check(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'vectors', 'compute-inference.json')):
    d = json.load(open(path)); bad = 0; tot = 0
    for v in d['vectors']:
        blobs = {kk: bytes.fromhex(b) for kk, b in v.get('blobs', {}).items()}
        items, leaves, root, fsh = infer(v['task'], blobs)
        for a, e in zip(items, v['items']):
            tot += 1; bad += a.hex() != e['bytes_hex']
    return '%d/%d inference items mismatch' % (bad, tot)
