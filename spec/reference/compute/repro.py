import ctypes, struct, json, os
from fractions import Fraction
import numpy as np
import blake3

F = np.float32
_lib = ctypes.CDLL(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'libm_repro.so'))
def _vec(fn):
    f = getattr(_lib, fn)
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
    def g(x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty_like(x)
        f(x.ctypes.data, y.ctypes.data, x.size)
        return y
    return g
expf = _vec('v_expf'); logf = _vec('v_logf'); tanhf = _vec('v_tanhf')

def fbits(x): return int(np.array(x, dtype=np.float32).view(np.uint32))
def ffrom(b): return np.array(b, dtype=np.uint32).view(np.float32)[()]

# ---------- decimal -> binary32, correctly rounded ----------
def dec_to_f32(s):
    fr = Fraction(s)
    c = np.float32(float(fr))
    best = None
    for cand in (np.nextafter(c, F(-np.inf)), c, np.nextafter(c, F(np.inf))):
        d = abs(Fraction(float(cand)) - fr)
        key = (d, fbits(cand) & 1)
        if best is None or key < best[0]:
            best = (key, cand)
    return F(best[1])

# ---------- ChaCha20 ----------
def _rotl(v, n): return ((v << n) | (v >> (32 - n))) & 0xffffffff
def _qr(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & 0xffffffff; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xffffffff; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xffffffff; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xffffffff; s[b] = _rotl(s[b] ^ s[c], 7)
def chacha_block(key, counter):
    kw = list(struct.unpack('<8I', key))
    st = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574] + kw + [counter & 0xffffffff, counter >> 32, 0, 0]
    w = st[:]
    for _ in range(10):
        _qr(w, 0, 4, 8, 12); _qr(w, 1, 5, 9, 13); _qr(w, 2, 6, 10, 14); _qr(w, 3, 7, 11, 15)
        _qr(w, 0, 5, 10, 15); _qr(w, 1, 6, 11, 12); _qr(w, 2, 7, 8, 13); _qr(w, 3, 4, 9, 14)
    return struct.pack('<16I', *[(w[i] + st[i]) & 0xffffffff for i in range(16)])

class Stream:
    def __init__(self, key):
        self.key = key; self.ctr = 0; self.buf = b''; self.pos = 0
    def _take(self, n):
        while len(self.buf) - self.pos < n:
            self.buf = self.buf[self.pos:] + chacha_block(self.key, self.ctr); self.ctr += 1; self.pos = 0
        r = self.buf[self.pos:self.pos + n]; self.pos += n
        return r
    def next_u32(self): return struct.unpack('<I', self._take(4))[0]
    def next_u64(self): return struct.unpack('<Q', self._take(8))[0]
    def unit_f32(self): return F(F(self.next_u32() >> 8) * F(2.0 ** -24))
    def symmetric(self, a): return F(F(F(self.unit_f32() * F(2)) - F(1)) * F(a))
    def uniform_below(self, bound):
        rejected = (2 ** 64) % bound
        while True:
            x = self.next_u64()
            if x <= 2 ** 64 - 1 - rejected: return x % bound

def compute_stream(seed, index, index2, purpose):
    mat = struct.pack('<QQQ', seed, index, index2) + purpose.encode()
    key = blake3.blake3(mat, derive_key_context="market v1 compute stream").digest()
    return Stream(key)

# ---------- safetensors ----------
def st_bytes(tensors, fmt):
    """tensors: list of (name, dtype, shape, bytes) -- sorted here"""
    f32 = sorted([t for t in tensors if t[1] == 'F32'], key=lambda t: t[0].encode())
    u32 = sorted([t for t in tensors if t[1] == 'U32'], key=lambda t: t[0].encode())
    parts = ['"__metadata__":{"format":"%s"}' % fmt]
    off = 0; data = b''
    for name, dt, shape, b in f32 + u32:
        parts.append('"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}' % (
            name, dt, ','.join(str(s) for s in shape), off, off + len(b)))
        off += len(b); data += b
    h = ('{' + ','.join(parts) + '}').encode()
    h += b' ' * ((-len(h)) % 8)
    return struct.pack('<Q', len(h)) + h + data

def st_parse(b):
    n = struct.unpack('<Q', b[:8])[0]
    hdr = json.loads(b[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == '__metadata__': continue
        s, e = v['data_offsets']
        raw = b[8 + n + s: 8 + n + e]
        dt = {'F32': np.float32, 'U32': np.uint32}[v['dtype']]
        out[k] = np.frombuffer(raw, dtype='<' + np.dtype(dt).str[1:]).reshape(v['shape']).astype(dt)
    return out

def f32b(a): return np.ascontiguousarray(a, dtype='<f4').tobytes()

def state_bytes(params, m, v, step, fmt='market-train-state-v1'):
    t = []
    for name, p in params.items():
        t.append(('param.' + name, 'F32', list(p.shape), f32b(p)))
        if m is not None: t.append(('opt.m.' + name, 'F32', list(p.shape), f32b(m[name])))
        if v is not None: t.append(('opt.v.' + name, 'F32', list(p.shape), f32b(v[name])))
    t.append(('step', 'U32', [1], struct.pack('<I', step)))
    return st_bytes(t, fmt)

def weights_bytes(params):
    return st_bytes([(n, 'F32', list(p.shape), f32b(p)) for n, p in params.items()], 'market-weights-v1')

def b3(x): return blake3.blake3(x).hexdigest()
