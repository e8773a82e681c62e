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
