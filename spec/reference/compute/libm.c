#include <stdint.h>
#include <string.h>
static inline uint32_t bits(float x){uint32_t u;memcpy(&u,&x,4);return u;}
static inline float fl(uint32_t u){float x;memcpy(&x,&u,4);return x;}

float my_scalbnf(float y, int n){
    if (n > 127) { y = y * fl(0x7f000000); n -= 127;
        if (n > 127) { y = y * fl(0x7f000000); n -= 127; if (n > 127) n = 127; } }
    else if (n < -126) { y = y * fl(0x0c800000); n += 102;
        if (n < -126) { y = y * fl(0x0c800000); n += 102; if (n < -126) n = -126; } }
    return y * fl((uint32_t)(127 + n) << 23);
}

float my_expf(float x){
    const float LN2_HI = fl(0x3f317200), LN2_LO = fl(0x35bfbe8e), INV_LN2 = fl(0x3fb8aa3b);
    const float P1 = fl(0x3e2aaa8f), P2 = fl(0xbb355215);
    uint32_t hx = bits(x); int sign = hx >> 31; hx &= 0x7fffffff;
    int k; float hi, lo;
    if (hx >= 0x42aeac50) {
        if (hx > 0x7f800000) return x;
        if (hx >= 0x42b17218 && sign == 0) return x * fl(0x7f000000);
        if (sign == 1 && hx >= 0x42cff1b5) return 0.0f;
    }
    if (hx > 0x3eb17218) {
        if (hx > 0x3f851592) {
            float t = INV_LN2 * x;
            t = t + (sign ? -0.5f : 0.5f);
            k = (int)t;
        } else k = 1 - 2*sign;
        float fk = (float)k;
        float p = fk * LN2_HI;
        hi = x - p;
        lo = fk * LN2_LO;
        x = hi - lo;
    } else if (hx > 0x39000000) { k = 0; hi = x; lo = 0; }
    else return 1.0f + x;
    float xx = x * x;
    float c = x - xx * (P1 + xx * P2);
    float y = 1.0f + (((x * c) / (2.0f - c) - lo) + hi);
    return k == 0 ? y : my_scalbnf(y, k);
}

float my_expm1f(float x){
    const float LN2_HI = fl(0x3f317180), LN2_LO = fl(0x3717f7d1), INV_LN2 = fl(0x3fb8aa3b);
    const float Q1 = fl(0xbd088868), Q2 = fl(0x3acf3010);
    uint32_t hx = bits(x); int sign = hx >> 31; hx &= 0x7fffffff;
    int k; float hi, lo, c = 0.0f;
    if (hx >= 0x4195b844) {
        if (hx > 0x7f800000) return x;
        if (sign) return -1.0f;
        if (hx > 0x42b17217) return x * fl(0x7f000000);
    }
    if (hx > 0x3eb17218) {
        if (hx < 0x3f851592) {
            if (!sign) { hi = x - LN2_HI; lo = LN2_LO; k = 1; }
            else { hi = x + LN2_HI; lo = -LN2_LO; k = -1; }
        } else {
            float t = INV_LN2 * x; t = t + (sign ? -0.5f : 0.5f);
            k = (int)t;
            float fk = (float)k;
            hi = x - fk * LN2_HI;
            lo = fk * LN2_LO;
        }
        x = hi - lo;
        c = (hi - x) - lo;
    } else if (hx < 0x33000000) {
        return x;
    } else k = 0;
    float hfx = 0.5f * x;
    float hxs = x * hfx;
    float r1 = 1.0f + hxs * (Q1 + hxs * Q2);
    float t = 3.0f - r1 * hfx;
    float e = hxs * ((r1 - t) / (6.0f - x * t));
    if (k == 0) return x - (x * e - hxs);
    e = x * (e - c) - c;
    e = e - hxs;
    if (k == -1) return 0.5f * (x - e) - 0.5f;
    if (k == 1) {
        if (x < -0.25f) return -2.0f * (e - (x + 0.5f));
        return 1.0f + 2.0f * (x - e);
    }
    float twopk = fl((uint32_t)(127 + k) << 23);
    if (k < 0 || k > 56) {
        float y = (x - e) + 1.0f;
        if (k == 128) y = (y * 2.0f) * fl(0x7f000000); else y = y * twopk;
        return y - 1.0f;
    }
    float uf = fl((uint32_t)(127 - k) << 23);
    if (k < 23) return ((x - e) + (1.0f - uf)) * twopk;
    return ((x - (e + uf)) + 1.0f) * twopk;
}

float my_tanhf(float x){
    uint32_t ix = bits(x); int sign = ix >> 31; ix &= 0x7fffffff; x = fl(ix);
    float t, e;
    if (ix > 0x3f0c9f54) {
        if (ix > 0x41200000) t = 1.0f + 0.0f / x;
        else { e = my_expm1f(2.0f * x); t = 1.0f - 2.0f / (e + 2.0f); }
    } else if (ix > 0x3e82c578) {
        e = my_expm1f(2.0f * x); t = e / (e + 2.0f);
    } else if (ix >= 0x00800000) {
        e = my_expm1f(-2.0f * x); t = -e / (e + 2.0f);
    } else t = x;
    return sign ? -t : t;
}

float my_logf(float x){
    const float LN2_HI = fl(0x3f317180), LN2_LO = fl(0x3717f7d1);
    const float LG1 = fl(0x3f2aaaaa), LG2 = fl(0x3eccce13), LG3 = fl(0x3e91e9ee), LG4 = fl(0x3e789e26);
    uint32_t ix = bits(x); int k = 0;
    if (ix < 0x00800000 || (ix >> 31)) {
        if ((uint32_t)(ix << 1) == 0) return -1.0f/0.0f;
        if (ix >> 31) return (x - x) / 0.0f;
        k = -25; x = x * fl(0x4c000000); ix = bits(x);
    } else if (ix >= 0x7f800000) return x;
    else if (ix == 0x3f800000) return 0.0f;
    ix = ix + 0x004afb0d;
    k = k + (int)(ix >> 23) - 127;
    ix = (ix & 0x007fffff) + 0x3f3504f3;
    x = fl(ix);
    float f = x - 1.0f;
    float s = f / (2.0f + f);
    float z = s * s;
    float w = z * z;
    float t1 = w * (LG2 + w * LG4);
    float t2 = z * (LG1 + w * LG3);
    float r = t2 + t1;
    float hfsq = (0.5f * f) * f;
    float dk = (float)k;
    return ((((s * (hfsq + r)) + dk * LN2_LO) - hfsq) + f) + dk * LN2_HI;
}

void v_expf(const float*x,float*y,long n){for(long i=0;i<n;i++)y[i]=my_expf(x[i]);}
void v_logf(const float*x,float*y,long n){for(long i=0;i<n;i++)y[i]=my_logf(x[i]);}
void v_tanhf(const float*x,float*y,long n){for(long i=0;i<n;i++)y[i]=my_tanhf(x[i]);}

/* ------------------------------------------------------------------------------------------
 * NOT from the spec. COMPUTE.md 11.4 and Appendix C leave `powf`, `cosf`, `sinf` (and
 * `rem_pio2f`, `k_cosf`, `k_sinf`) of the `libm` crate 0.2.16 open. These are transcribed
 * (from the port author's knowledge of the public C sources, not from any Rust) from FreeBSD
 * msun's e_powf.c and musl's cosf.c, sinf.c, __cosdf.c, __sindf.c and __rem_pio2f.c, which
 * the spec names as the crate's origins. Only what the rotary table reaches is kept:
 * powf(x, y) for finite x > 0 and finite y (no negative x, no |y| > 2^27, no zero, infinite
 * or NaN argument), cosf/sinf for finite |x| < 2^28·(pi/2). The C library's (glibc 2.36)
 * routines do NOT reproduce compute-llama.json (llama.py --glibc shows it).
 * ------------------------------------------------------------------------------------------ */
#include <math.h>

static const float
 PW_bp[] = {1.0f, 1.5f}, PW_dp_h[] = {0.0f, 5.84960938e-01f}, PW_dp_l[] = {0.0f, 1.56322085e-06f},
 PW_two24 = 16777216.0f, PW_huge = 1.0e30f, PW_tiny = 1.0e-30f,
 PW_L1 = 6.0000002384e-01f, PW_L2 = 4.2857143283e-01f, PW_L3 = 3.3333334327e-01f,
 PW_L4 = 2.7272811532e-01f, PW_L5 = 2.3066075146e-01f, PW_L6 = 2.0697501302e-01f,
 PW_P1 = 1.6666667163e-01f, PW_P2 = -2.7777778450e-03f, PW_P3 = 6.6137559770e-05f,
 PW_P4 = -1.6533901999e-06f, PW_P5 = 4.1381369442e-08f,
 PW_lg2 = 6.9314718246e-01f, PW_lg2_h = 6.93145752e-01f, PW_lg2_l = 1.42860654e-06f,
 PW_ovt = 4.2995665694e-08f,
 PW_cp = 9.6179670095e-01f, PW_cp_h = 9.6191406250e-01f, PW_cp_l = -1.1736857402e-04f;

/* FreeBSD e_powf.c, binary32 throughout; x > 0 finite, y finite with |y| <= 2^27. */
float my_powf(float x, float y){
    float z, ax, z_h, z_l, p_h, p_l, y1, t1, t2, r, s, t, u, v, w;
    float s2, s_h, s_l, t_h, t_l;
    int32_t i, j, k, n, hx, hy, ix, iy, is;
    hx = (int32_t)bits(x); hy = (int32_t)bits(y);
    ix = hx & 0x7fffffff; iy = hy & 0x7fffffff;
    if (iy == 0) return 1.0f;                          /* x**0 = 1 */
    if (hx == 0x3f800000) return 1.0f;                 /* 1**y = 1 */
    if (iy == 0x3f800000) return hy < 0 ? 1.0f / x : x;
    if (hy == 0x40000000) return x * x;                /* y = 2 */
    if (hy == 0x3f000000) return sqrtf(x);             /* y = 0.5, x >= 0: IEEE sqrt */
    ax = x;
    n = 0;
    if (ix < 0x00800000) { ax = ax * PW_two24; n -= 24; ix = (int32_t)bits(ax); }
    n += (ix >> 23) - 0x7f;
    j = ix & 0x007fffff;
    ix = j | 0x3f800000;
    if (j <= 0x1cc471) k = 0;                          /* |x| < sqrt(3/2) */
    else if (j < 0x5db3d7) k = 1;                      /* |x| < sqrt(3) */
    else { k = 0; n += 1; ix -= 0x00800000; }
    ax = fl((uint32_t)ix);
    u = ax - PW_bp[k];
    v = 1.0f / (ax + PW_bp[k]);
    s = u * v;
    s_h = fl(bits(s) & 0xfffff000);
    is = ((ix >> 1) & 0xfffff000) | 0x20000000;
    t_h = fl((uint32_t)(is + 0x00400000 + (k << 21)));
    t_l = ax - (t_h - PW_bp[k]);
    s_l = v * ((u - s_h * t_h) - s_h * t_l);
    s2 = s * s;
    r = s2 * s2 * (PW_L1 + s2 * (PW_L2 + s2 * (PW_L3 + s2 * (PW_L4 + s2 * (PW_L5 + s2 * PW_L6)))));
    r = r + s_l * (s_h + s);
    s2 = s_h * s_h;
    t_h = 3.0f + s2 + r;
    t_h = fl(bits(t_h) & 0xfffff000);
    t_l = r - ((t_h - 3.0f) - s2);
    u = s_h * t_h;
    v = s_l * t_h + t_l * s;
    p_h = u + v;
    p_h = fl(bits(p_h) & 0xfffff000);
    p_l = v - (p_h - u);
    z_h = PW_cp_h * p_h;
    z_l = PW_cp_l * p_h + p_l * PW_cp + PW_dp_l[k];
    t = (float)n;
    t1 = (((z_h + z_l) + PW_dp_h[k]) + t);
    t1 = fl(bits(t1) & 0xfffff000);
    t2 = z_l - (((t1 - t) - PW_dp_h[k]) - z_h);
    /* (y1 + y2) * (t1 + t2) */
    y1 = fl(bits(y) & 0xfffff000);
    p_l = (y - y1) * t1 + y * t2;
    p_h = y1 * t1;
    z = p_l + p_h;
    j = (int32_t)bits(z);
    if (j > 0x43000000) return PW_huge * PW_huge;
    else if (j == 0x43000000) { if (p_l + PW_ovt > z - p_h) return PW_huge * PW_huge; }
    else if ((j & 0x7fffffff) > 0x43160000) return PW_tiny * PW_tiny;
    else if ((uint32_t)j == 0xc3160000u) { if (p_l <= z - p_h) return PW_tiny * PW_tiny; }
    /* 2**(p_h + p_l) */
    i = j & 0x7fffffff;
    k = (i >> 23) - 0x7f;
    n = 0;
    if (i > 0x3f000000) {                              /* |z| > 0.5: n = [z + 0.5] */
        n = j + (0x00800000 >> (k + 1));
        k = ((n & 0x7fffffff) >> 23) - 0x7f;
        t = fl((uint32_t)(n & ~(0x007fffff >> k)));
        n = ((n & 0x007fffff) | 0x00800000) >> (23 - k);
        if (j < 0) n = -n;
        p_h = p_h - t;
    }
    t = p_l + p_h;
    t = fl(bits(t) & 0xffff8000);
    u = t * PW_lg2_h;
    v = (p_l - (t - p_h)) * PW_lg2 + t * PW_lg2_l;
    z = u + v;
    w = v - (z - u);
    t = z * z;
    t1 = z - t * (PW_P1 + t * (PW_P2 + t * (PW_P3 + t * (PW_P4 + t * PW_P5))));
    r = (z * t1) / (t1 - 2.0f) - (w + z * w);
    z = 1.0f - (r - z);
    j = (int32_t)bits(z);
    j += (int32_t)((uint32_t)n << 23);
    if ((j >> 23) <= 0) z = my_scalbnf(z, n);          /* subnormal output */
    else z = fl((uint32_t)j);
    return z;
}

/* musl __cosdf.c / __sindf.c: binary64 inside, one rounding to binary32 at the end. */
static const double
 KC0 = -0x1ffffffd0c5e81.0p-54, KC1 = 0x155553e1053a42.0p-57,
 KC2 = -0x16c087e80f1e27.0p-62, KC3 = 0x199342e0ee5069.0p-68,
 KS1 = -0x15555554cbac77.0p-55, KS2 = 0x111110896efbb2.0p-59,
 KS3 = -0x1a00f9e2cae774.0p-65, KS4 = 0x16cd878c3b46a7.0p-71;
static float k_cosf(double x){
    double z = x * x, w = z * z, r = KC2 + z * KC3;
    return (float)(((1.0 + z * KC0) + w * KC1) + (w * z) * r);
}
static float k_sinf(double x){
    double z = x * x, w = z * z, r = KS3 + z * KS4, s = z * x;
    return (float)((x + s * (KS1 + z * KS2)) + (s * w) * r);
}
/* musl __rem_pio2f.c, medium arguments only (|x| < 2^28·pi/2), round to nearest. */
static int rem_pio2f(float x, double *y){
    const double toint = 1.5 / 2.220446049250313080847e-16, invpio2 = 6.36619772367581382433e-01,
                 pio2_1 = 1.57079631090164184570e+00, pio2_1t = 1.58932547735281966916e-08;
    double fn = ((double)x * invpio2 + toint) - toint;
    *y = ((double)x - fn * pio2_1) - fn * pio2_1t;
    return (int)fn;
}
static const double PIO2 = 1.57079632679489661923;    /* M_PI_2 */
float my_cosf(float x){
    uint32_t ix = bits(x); int sign = ix >> 31; ix &= 0x7fffffff; double y, xd = x;
    if (ix <= 0x3f490fda) { if (ix < 0x39800000) return 1.0f; return k_cosf(xd); }
    if (ix <= 0x407b53d1) {
        if (ix > 0x4016cbe3) return -k_cosf(sign ? xd + 2 * PIO2 : xd - 2 * PIO2);
        return sign ? k_sinf(xd + PIO2) : k_sinf(PIO2 - xd);
    }
    if (ix <= 0x40e231d5) {
        if (ix > 0x40afeddf) return k_cosf(sign ? xd + 4 * PIO2 : xd - 4 * PIO2);
        return sign ? k_sinf(-xd - 3 * PIO2) : k_sinf(xd - 3 * PIO2);
    }
    if (ix >= 0x7f800000) return x - x;
    switch (rem_pio2f(x, &y) & 3) {
    case 0: return k_cosf(y);
    case 1: return k_sinf(-y);
    case 2: return -k_cosf(y);
    default: return k_sinf(y);
    }
}
float my_sinf(float x){
    uint32_t ix = bits(x); int sign = ix >> 31; ix &= 0x7fffffff; double y, xd = x;
    if (ix <= 0x3f490fda) { if (ix < 0x39800000) return x; return k_sinf(xd); }
    if (ix <= 0x407b53d1) {
        if (ix <= 0x4016cbe3) return sign ? -k_cosf(xd + PIO2) : k_cosf(xd - PIO2);
        return k_sinf(sign ? -(xd + 2 * PIO2) : -(xd - 2 * PIO2));
    }
    if (ix <= 0x40e231d5) {
        if (ix <= 0x40afeddf) return sign ? k_cosf(xd + 3 * PIO2) : -k_cosf(xd - 3 * PIO2);
        return k_sinf(sign ? xd + 4 * PIO2 : xd - 4 * PIO2);
    }
    if (ix >= 0x7f800000) return x - x;
    switch (rem_pio2f(x, &y) & 3) {
    case 0: return k_sinf(y);
    case 1: return k_cosf(y);
    case 2: return k_sinf(-y);
    default: return -k_cosf(y);
    }
}
