//! Kernels of the `repro` profile: every output is computed by one fixed sequence of IEEE 754
//! binary32 operations, whatever the CPU, its SIMD width or the thread count.
//!
//! The rules that make this so:
//! - No fused multiply-add anywhere: `a * b + c` is two roundings, on every CPU (Rust never
//!   contracts float expressions, and we never call `mul_add`).
//! - Reductions run in one fixed order (ascending index). Vectorisation and threads only split
//!   the work across *independent outputs* (columns of a tile, rows of a matrix), never across a
//!   reduction.
//! - Transcendentals come from the pure-Rust `libm` crate (pinned), not the system libm.
//! - Division and square root are IEEE-exact on every target.

use rayon::prelude::*;

/// Runs `op` with the widest vector instructions this CPU offers (AVX2 on an x86-64 that has
/// it, the SSE2 baseline otherwise), chosen at run time by `pulp`. The matmul kernels are plain
/// loops over independent outputs that the compiler vectorises for whatever instructions are
/// enabled around them (everything under `op` is `#[inline(always)]`, so it is compiled inside
/// `pulp`'s function with the instructions enabled), so this changes their speed, never their
/// bits: each output still adds one product at a time in ascending order, every operation
/// rounded (Rust never fuses a multiply and an add into an FMA, whichever instructions are
/// enabled), and vector lanes only ever hold different outputs. `scripts/cross-cpu.sh` runs
/// the golden vectors on CPUs without AVX2 (emulated: the baseline path) and natively.
#[inline(always)]
fn widest<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    pulp::Arch::new().dispatch(op)
}

/// A call of a kernel below, as `pulp` runs it: each variant's arguments, taken by the
/// `#[inline(always)]` kernel inside the dispatched function.
enum Kernel<'a> {
    /// [`matmul_rows`].
    Rows {
        out: &'a mut [f32],
        a: &'a [f32],
        b: &'a [f32],
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    },
    /// Every row of one column block of [`matmul_by_columns`].
    Columns {
        buf: &'a mut [f32],
        a: &'a [f32],
        b: &'a [f32],
        m: usize,
        c0: usize,
        w: usize,
        k: usize,
        n: usize,
    },
    /// [`row_block`].
    Row {
        o: &'a mut [f32],
        a: &'a [f32],
        b: &'a [f32],
        c0: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    },
}

impl pulp::WithSimd for Kernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        match self {
            Kernel::Rows {
                out,
                a,
                b,
                m,
                k,
                n,
                accumulate,
            } => matmul_rows(out, a, b, m, k, n, accumulate),
            Kernel::Columns {
                buf,
                a,
                b,
                m,
                c0,
                w,
                k,
                n,
            } => {
                let mut r = 0;
                while r + BLOCK_ROWS <= m {
                    column_block::<BLOCK_ROWS, BLOCK_COLS>(buf, a, b, r, c0, w, k, n);
                    r += BLOCK_ROWS;
                }
                while r < m {
                    column_block::<1, BLOCK_COLS>(buf, a, b, r, c0, w, k, n);
                    r += 1;
                }
            }
            Kernel::Row {
                o,
                a,
                b,
                c0,
                k,
                n,
                accumulate,
            } => row_block(o, a, b, c0, k, n, accumulate),
        }
    }
}

/// Columns computed together by the matmul micro-kernel (independent outputs).
const TILE_COLS: usize = 16;
/// Rows computed together by the matmul micro-kernel.
const TILE_ROWS: usize = 4;
/// Rows handed to one rayon task.
const ROWS_PER_TASK: usize = 16;

/// `out[m, n] = (accumulate ? out[m, n] : 0) + sum_{k ascending} a[m, k] * b[k, n]`, where the
/// sum starts from 0 and adds one product at a time. Row-major `a` is `m × k`, `b` is `k × n`.
pub fn matmul(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert_eq!(a.len(), m * k, "matmul: a");
    assert_eq!(b.len(), k * n, "matmul: b");
    assert_eq!(out.len(), m * n, "matmul: out");
    if n == 0 {
        return;
    }
    if m == 1 {
        // One row (decoding a token): split the columns instead, so every thread has work. Each
        // output still adds its `k` products alone, in ascending order: the same bits.
        return row_times_matrix(out, a, b, k, n, accumulate);
    }
    if m * n <= COLUMN_SPLIT_MAX_OUTPUTS && n >= 2 * COLS_PER_TASK {
        // Split the columns, so each thread keeps its block of `b` in cache across the row
        // tiles: measured faster at every row count (42 to 4096 rows, `matmul_tile`). Same
        // per-output order, same bits.
        return matmul_by_columns(out, a, b, m, k, n, accumulate);
    }
    out.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(task, out_rows)| {
            let row0 = task * ROWS_PER_TASK;
            let rows = out_rows.len() / n;
            let a_rows = &a[row0 * k..(row0 + rows) * k];
            widest(Kernel::Rows {
                out: out_rows,
                a: a_rows,
                b,
                m: rows,
                k,
                n,
                accumulate,
            });
        });
}

/// Columns handed to one rayon task when the work is split by columns.
const COLS_PER_TASK: usize = 256;

/// The register tile of [`matmul_by_columns`]: rows × columns of accumulators. 3 × 32 (12
/// AVX2 registers of accumulators) measured fastest where AVX2 is dispatched (`matmul_tile`:
/// 4 × 16, 2 × 32, 4 × 32, 6 × 16, 8 × 8, 3 × 40 and 2 × 48 were slower).
const BLOCK_ROWS: usize = 3;
const BLOCK_COLS: usize = 32;

/// Up to this many outputs, [`matmul`] splits the work by columns, each block into a buffer of
/// its own before it is copied out: the buffers double the output's memory, so a larger
/// output (a long batch through a large vocabulary) is split by rows instead.
const COLUMN_SPLIT_MAX_OUTPUTS: usize = 1 << 24;

/// [`matmul`] split by columns: each task computes every row of one block of columns into a buffer
/// of its own (row tiles of `TILE_ROWS`, then single rows), and the blocks are copied out.
fn matmul_by_columns(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let starts: Vec<usize> = (0..n).step_by(COLS_PER_TASK).collect();
    let blocks: Vec<(usize, usize, Vec<f32>)> = starts
        .into_par_iter()
        .map(|c0| {
            let w = COLS_PER_TASK.min(n - c0);
            let mut buf = vec![0.0f32; m * w];
            widest(Kernel::Columns {
                buf: &mut buf,
                a,
                b,
                m,
                c0,
                w,
                k,
                n,
            });
            (c0, w, buf)
        })
        .collect();
    for (c0, w, buf) in blocks {
        for r in 0..m {
            let o = &mut out[r * n + c0..r * n + c0 + w];
            let src = &buf[r * w..(r + 1) * w];
            for j in 0..w {
                o[j] = if accumulate { o[j] + src[j] } else { src[j] };
            }
        }
    }
}

/// Rows `r..r+R` of the column block starting at `c0` (width `w`) into `buf` (`m × w`): each
/// output adds its `k` products in ascending order, starting from 0.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn column_block<const R: usize, const C: usize>(
    buf: &mut [f32],
    a: &[f32],
    b: &[f32],
    r: usize,
    c0: usize,
    w: usize,
    k: usize,
    n: usize,
) {
    let mut c = 0;
    while c + C <= w {
        let mut acc = [[0.0f32; C]; R];
        for kk in 0..k {
            let brow: &[f32; C] = b[kk * n + c0 + c..kk * n + c0 + c + C]
                .try_into()
                .unwrap_or_else(|_| unreachable!());
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let x = a[(r + i) * k + kk];
                for j in 0..C {
                    acc_row[j] += x * brow[j];
                }
            }
        }
        for (i, acc_row) in acc.iter().enumerate() {
            buf[(r + i) * w + c..(r + i) * w + c + C].copy_from_slice(acc_row);
        }
        c += C;
    }
    for i in r..r + R {
        for j in c..w {
            let mut acc = 0.0f32;
            for kk in 0..k {
                acc += a[i * k + kk] * b[kk * n + c0 + j];
            }
            buf[i * w + j] = acc;
        }
    }
}

/// `out[n] (+)= sum_{k ascending} a[k] * b[k, n]`, split across threads by columns.
fn row_times_matrix(out: &mut [f32], a: &[f32], b: &[f32], k: usize, n: usize, accumulate: bool) {
    out.par_chunks_mut(COLS_PER_TASK)
        .enumerate()
        .for_each(|(task, o)| {
            widest(Kernel::Row {
                o,
                a,
                b,
                c0: task * COLS_PER_TASK,
                k,
                n,
                accumulate,
            })
        });
}

/// The columns `c0..c0 + o.len()` of [`row_times_matrix`].
#[inline(always)]
fn row_block(o: &mut [f32], a: &[f32], b: &[f32], c0: usize, k: usize, n: usize, accumulate: bool) {
    let mut c = 0;
    while c + TILE_COLS <= o.len() {
        let mut acc = [0.0f32; TILE_COLS];
        for (kk, &x) in a.iter().enumerate() {
            let brow = &b[kk * n + c0 + c..kk * n + c0 + c + TILE_COLS];
            for j in 0..TILE_COLS {
                acc[j] += x * brow[j];
            }
        }
        for j in 0..TILE_COLS {
            o[c + j] = if accumulate {
                o[c + j] + acc[j]
            } else {
                acc[j]
            };
        }
        c += TILE_COLS;
    }
    for (j, slot) in o.iter_mut().enumerate().skip(c) {
        let mut acc = 0.0f32;
        for (kk, &x) in a.iter().enumerate().take(k) {
            acc += x * b[kk * n + c0 + j];
        }
        *slot = if accumulate { *slot + acc } else { acc };
    }
}

#[inline(always)]
fn matmul_rows(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let mut r = 0;
    while r + TILE_ROWS <= m {
        let mut c = 0;
        while c + TILE_COLS <= n {
            tile::<TILE_ROWS>(out, a, b, r, c, k, n, accumulate);
            c += TILE_COLS;
        }
        edge_cols(out, a, b, r, TILE_ROWS, c, k, n, accumulate);
        r += TILE_ROWS;
    }
    while r < m {
        let mut c = 0;
        while c + TILE_COLS <= n {
            tile::<1>(out, a, b, r, c, k, n, accumulate);
            c += TILE_COLS;
        }
        edge_cols(out, a, b, r, 1, c, k, n, accumulate);
        r += 1;
    }
}

/// An `R × TILE_COLS` block: each of its outputs adds its `k` products in ascending order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<const R: usize>(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    r: usize,
    c: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let mut acc = [[0.0f32; TILE_COLS]; R];
    for kk in 0..k {
        let brow: &[f32; TILE_COLS] = b[kk * n + c..kk * n + c + TILE_COLS]
            .try_into()
            .unwrap_or_else(|_| unreachable!());
        for (i, acc_row) in acc.iter_mut().enumerate() {
            let x = a[(r + i) * k + kk];
            for j in 0..TILE_COLS {
                acc_row[j] += x * brow[j];
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate() {
        let o = &mut out[(r + i) * n + c..(r + i) * n + c + TILE_COLS];
        for j in 0..TILE_COLS {
            o[j] = if accumulate {
                o[j] + acc_row[j]
            } else {
                acc_row[j]
            };
        }
    }
}

/// The columns right of the last full tile, with the same per-output order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn edge_cols(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    r: usize,
    rows: usize,
    c0: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    for i in r..r + rows {
        for c in c0..n {
            let mut acc = 0.0f32;
            for kk in 0..k {
                acc += a[i * k + kk] * b[kk * n + c];
            }
            let o = &mut out[i * n + c];
            *o = if accumulate { *o + acc } else { acc };
        }
    }
}

/// The transpose of a row-major `rows × cols` matrix.
pub fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

/// `out[m, n] += bias[n]` for every row.
pub fn add_bias(out: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    out.par_chunks_mut(n * ROWS_PER_TASK).for_each(|rows| {
        for row in rows.chunks_mut(n) {
            for (o, b) in row.iter_mut().zip(bias) {
                *o += *b;
            }
        }
    });
}

/// A linear layer `y = x w + b` forward: `x` is `m × k`, `w` is `k × n`.
pub fn linear_forward(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) {
    matmul(y, x, w, m, k, n, false);
    if let Some(b) = b {
        add_bias(y, b);
    }
}

/// A linear layer backward. Accumulates into `dx` (`m × k`), `dw` (`k × n`) and `db` (`n`):
/// `dx += dy wᵀ`, `dw += xᵀ dy` (sum over rows ascending), `db += Σ_rows dy` (ascending).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    if let Some(dx) = dx {
        let wt = transpose(w, k, n);
        matmul(dx, dy, &wt, m, n, k, true);
    }
    let xt = transpose(x, m, k);
    matmul(dw, &xt, dy, k, m, n, true);
    if let Some(db) = db {
        // Column sums: each column adds its rows in ascending order.
        let mut sums = vec![0.0f32; n];
        for row in dy.chunks_exact(n) {
            for (s, v) in sums.iter_mut().zip(row) {
                *s += *v;
            }
        }
        for (d, s) in db.iter_mut().zip(&sums) {
            *d += *s;
        }
    }
}

/// Layer norm over rows of width `c`, with `eps = 1e-5`. Returns per-row mean and 1/std for
/// the backward pass.
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    c: usize,
) {
    out.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, xr), (mu, rs))| {
            let mut sum = 0.0f32;
            for v in xr {
                sum += *v;
            }
            let m = sum / c as f32;
            let mut var = 0.0f32;
            for v in xr {
                let d = *v - m;
                var += d * d;
            }
            let s = 1.0 / (var / c as f32 + 1e-5).sqrt();
            for i in 0..c {
                o[i] = (xr[i] - m) * s * w[i] + b[i];
            }
            *mu = m;
            *rs = s;
        });
}

/// Layer norm backward (as in llm.c). Accumulates into `dx`, `dw`, `db`; `dw` and `db` sum the
/// rows in ascending order.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    dx.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(x.par_chunks(c))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|(((dxr, dor), xr), (m, s))| {
            let mut dnorm_mean = 0.0f32;
            let mut dnorm_norm_mean = 0.0f32;
            for i in 0..c {
                let norm = (xr[i] - m) * s;
                let dnorm = w[i] * dor[i];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * norm;
            }
            dnorm_mean /= c as f32;
            dnorm_norm_mean /= c as f32;
            for i in 0..c {
                let norm = (xr[i] - m) * s;
                let dnorm = w[i] * dor[i];
                dxr[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
            }
        });
    for ((dor, xr), (m, s)) in dout.chunks(c).zip(x.chunks(c)).zip(mean.iter().zip(rstd)) {
        for i in 0..c {
            let norm = (xr[i] - m) * s;
            dw[i] += norm * dor[i];
            db[i] += dor[i];
        }
    }
}

const GELU_SCALE: f32 = 0.797_884_6; // sqrt(2 / pi)

/// GELU, tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))`.
pub fn gelu(x: f32) -> f32 {
    let cube = 0.044715 * x * x * x;
    0.5 * x * (1.0 + libm::tanhf(GELU_SCALE * (x + cube)))
}

/// d gelu(x) / dx.
pub fn gelu_grad(x: f32) -> f32 {
    let cube = 0.044715 * x * x * x;
    let t = libm::tanhf(GELU_SCALE * (x + cube));
    let sech2 = 1.0 - t * t;
    0.5 * (1.0 + t) + x * 0.5 * sech2 * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x)
}

/// Softmax of one row in place: max, then `exp(x - max)` summed ascending, then division.
pub fn softmax_row(row: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for v in row.iter() {
        if *v > max {
            max = *v;
        }
    }
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Softmax cross-entropy over the scored rows of `logits` (`rows × v`), spec/COMPUTE.md A.7:
/// the mean loss (scored rows added in ascending order, then one division by their count) and
/// `dlogits`, `(p − indicator) / n` for scored rows and zero for the others. Shared by every
/// token model so the loss is written once.
pub fn cross_entropy(
    mut logits: Vec<f32>,
    v: usize,
    targets: &[u32],
    scored: &[bool],
) -> (f32, Vec<f32>) {
    let n = scored.iter().filter(|s| **s).count().max(1) as f32;
    logits.par_chunks_mut(v).for_each(softmax_row);
    let probs = logits;
    let mut loss = 0.0f32;
    let mut dlogits = vec![0.0f32; probs.len()];
    for i in 0..scored.len() {
        if !scored[i] {
            continue;
        }
        let target = targets[i] as usize;
        let row = &probs[i * v..(i + 1) * v];
        loss += -libm::logf(row[target]);
        let d = &mut dlogits[i * v..(i + 1) * v];
        for j in 0..v {
            let indicator = if j == target { 1.0 } else { 0.0 };
            d[j] = (row[j] - indicator) / n;
        }
    }
    (loss / n, dlogits)
}

/// Causal multi-head attention forward (as in llm.c). `qkv` is `[b, t, 3c]` (queries, keys,
/// values); writes `out` `[b, t, c]` and the attention weights `att` `[b, h, t, t]`.
pub fn attention_forward(
    out: &mut [f32],
    att: &mut [f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    h: usize,
) {
    assert_eq!(att.len(), b * h * t * t, "attention_forward: att");
    let hs = c / h;
    let scale = 1.0 / (hs as f32).sqrt();
    // One task per (batch, head): it owns att[b, h] and out[b, :, h*hs..]; out is written after.
    let results: Vec<Vec<f32>> = att
        .par_chunks_mut(t * t)
        .enumerate()
        .map(|(bh, att_bh)| {
            let (bi, hi) = (bh / h, bh % h);
            let mut o = vec![0.0f32; t * hs];
            for ti in 0..t {
                let q = &qkv[(bi * t + ti) * 3 * c + hi * hs..][..hs];
                let row = &mut att_bh[ti * t..(ti + 1) * t];
                for (t2, r) in row.iter_mut().enumerate().take(ti + 1) {
                    let key = &qkv[(bi * t + t2) * 3 * c + c + hi * hs..][..hs];
                    let mut dot = 0.0f32;
                    for i in 0..hs {
                        dot += q[i] * key[i];
                    }
                    *r = dot * scale;
                }
                softmax_row(&mut row[..=ti]);
                for r in row[ti + 1..].iter_mut() {
                    *r = 0.0;
                }
                let orow = &mut o[ti * hs..(ti + 1) * hs];
                for (t2, a) in row.iter().enumerate().take(ti + 1) {
                    let v = &qkv[(bi * t + t2) * 3 * c + 2 * c + hi * hs..][..hs];
                    for i in 0..hs {
                        orow[i] += a * v[i];
                    }
                }
            }
            o
        })
        .collect();
    for (bh, o) in results.iter().enumerate() {
        let (bi, hi) = (bh / h, bh % h);
        for ti in 0..t {
            out[(bi * t + ti) * c + hi * hs..][..hs].copy_from_slice(&o[ti * hs..(ti + 1) * hs]);
        }
    }
}

/// Causal attention backward. Accumulates into `dqkv` `[b, t, 3c]` from `dout` `[b, t, c]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    b: usize,
    t: usize,
    c: usize,
    h: usize,
) {
    let hs = c / h;
    let scale = 1.0 / (hs as f32).sqrt();
    // Per (batch, head): local gradients for q, k, v at every position, in a fixed order.
    let results: Vec<Vec<f32>> = (0..b * h)
        .into_par_iter()
        .map(|bh| {
            let (bi, hi) = (bh / h, bh % h);
            let att_bh = &att[bh * t * t..(bh + 1) * t * t];
            let mut local = vec![0.0f32; t * 3 * hs]; // [t, (dq | dk | dv)]
            let mut datt = vec![0.0f32; t];
            let mut dpre = vec![0.0f32; t];
            for ti in 0..t {
                let a = &att_bh[ti * t..(ti + 1) * t];
                let d = &dout[(bi * t + ti) * c + hi * hs..][..hs];
                // Through the weighted sum of values.
                for t2 in 0..=ti {
                    let v = &qkv[(bi * t + t2) * 3 * c + 2 * c + hi * hs..][..hs];
                    let mut s = 0.0f32;
                    for i in 0..hs {
                        s += v[i] * d[i];
                    }
                    datt[t2] = s;
                    let dv = &mut local[t2 * 3 * hs + 2 * hs..t2 * 3 * hs + 3 * hs];
                    for i in 0..hs {
                        dv[i] += a[t2] * d[i];
                    }
                }
                // Through the softmax: dpre = a * (datt - sum(a * datt)).
                let mut dot = 0.0f32;
                for t2 in 0..=ti {
                    dot += a[t2] * datt[t2];
                }
                for t2 in 0..=ti {
                    dpre[t2] = a[t2] * (datt[t2] - dot);
                }
                // Through q · k.
                let q = &qkv[(bi * t + ti) * 3 * c + hi * hs..][..hs];
                for t2 in 0..=ti {
                    let key = &qkv[(bi * t + t2) * 3 * c + c + hi * hs..][..hs];
                    let g = dpre[t2] * scale;
                    for i in 0..hs {
                        local[ti * 3 * hs + i] += key[i] * g;
                    }
                    let dk = &mut local[t2 * 3 * hs + hs..t2 * 3 * hs + 2 * hs];
                    for i in 0..hs {
                        dk[i] += q[i] * g;
                    }
                }
            }
            local
        })
        .collect();
    for (bh, local) in results.iter().enumerate() {
        let (bi, hi) = (bh / h, bh % h);
        for ti in 0..t {
            for part in 0..3 {
                let dst = &mut dqkv[(bi * t + ti) * 3 * c + part * c + hi * hs..][..hs];
                let src = &local[ti * 3 * hs + part * hs..][..hs];
                for i in 0..hs {
                    dst[i] += src[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for kk in 0..k {
                    acc += a[i * k + kk] * b[kk * n + j];
                }
                out[i * n + j] = acc;
            }
        }
        out
    }

    #[test]
    fn tiled_matmul_is_bitwise_the_naive_order() {
        // Every path at its edges: one row (by columns), the column split with rows and
        // columns left over by the register tile, and a large output split by rows.
        for (m, k, n) in [
            (1, 1, 1),
            (5, 7, 3),
            (17, 33, 35),
            (64, 16, 48),
            (3, 0, 4),
            (1, 40, 600),
            (7, 33, 530),
            (300, 9, 1024),
            (33_000, 2, 512),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 3.0)
                .collect();
            let mut out = vec![0.0f32; m * n];
            matmul(&mut out, &a, &b, m, k, n, false);
            let expected = naive(&a, &b, m, k, n);
            assert!(
                out.iter()
                    .zip(&expected)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{k}x{n}"
            );
            // Accumulating adds each finished sum to what was there, once.
            let mut again = out.clone();
            matmul(&mut again, &a, &b, m, k, n, true);
            assert!(
                again
                    .iter()
                    .zip(&expected)
                    .all(|(x, y)| x.to_bits() == (y + y).to_bits()),
                "{m}x{k}x{n} accumulate"
            );
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut row = [1.0f32, 2.0, 3.0, -1.0];
        softmax_row(&mut row);
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(row[2] > row[1] && row[1] > row[0]);
    }

    #[test]
    fn gelu_grad_matches_finite_difference() {
        for x in [-3.0f32, -0.5, 0.0, 0.7, 2.5] {
            let h = 1e-3;
            let fd = (gelu(x + h) - gelu(x - h)) / (2.0 * h);
            assert!((fd - gelu_grad(x)).abs() < 1e-3, "{x}");
        }
    }
}
