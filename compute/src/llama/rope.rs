//! Rotary position embeddings, in Hugging Face's "rotate half" arrangement: dimension `i` of a
//! head is paired with dimension `i + d/2`.
//!
//! The angles are defined in binary32 with the pure-Rust `libm` routines, so both profiles (and
//! a third-party port) use the same table bit for bit:
//!
//! ```text
//! e_i      = (2i as f32) / (d as f32)             for i in 0..d/2
//! inv_i    = 1 / powf(theta, e_i)
//! angle    = (p as f32) * inv_i                   for position p
//! cos, sin = cosf(angle), sinf(angle)
//! ```

/// `cos` and `sin` of every (position, pair) up to a length, row-major `[position, d/2]`.
#[derive(Debug, Clone, Default)]
pub struct RopeTable {
    half: usize,
    inv_freq: Vec<f32>,
    /// `cos[p * half + i]`.
    pub cos: Vec<f32>,
    /// `sin[p * half + i]`.
    pub sin: Vec<f32>,
}

impl RopeTable {
    /// An empty table for heads of `head_dim` (even) with base `theta`.
    pub fn new(head_dim: usize, theta: f32) -> Self {
        let half = head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| 1.0 / libm::powf(theta, (2 * i) as f32 / head_dim as f32))
            .collect();
        Self {
            half,
            inv_freq,
            cos: Vec::new(),
            sin: Vec::new(),
        }
    }

    /// Positions the table holds.
    pub fn len(&self) -> usize {
        self.cos.len().checked_div(self.half).unwrap_or(0)
    }

    /// Whether the table holds no position.
    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }

    /// Extends the table to hold positions `0..positions`.
    pub fn ensure(&mut self, positions: usize) {
        for p in self.len()..positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                self.cos.push(libm::cosf(angle));
                self.sin.push(libm::sinf(angle));
            }
        }
    }

    /// Rotates one head's vector `x` (length `2 × half`) to position `p`:
    /// `x[i], x[i+h] ← x[i]·cos − x[i+h]·sin, x[i+h]·cos + x[i]·sin`.
    pub fn apply(&self, x: &mut [f32], p: usize) {
        let h = self.half;
        let (c, s) = (&self.cos[p * h..(p + 1) * h], &self.sin[p * h..(p + 1) * h]);
        for i in 0..h {
            let (a, b) = (x[i], x[i + h]);
            x[i] = a * c[i] - b * s[i];
            x[i + h] = b * c[i] + a * s[i];
        }
    }

    /// The backward pass of [`RopeTable::apply`] (its transpose: a rotation back), on one
    /// head's gradient `g` at position `p`:
    /// `g[i], g[i+h] ← g[i]·cos + g[i+h]·sin, g[i+h]·cos − g[i]·sin`.
    pub fn apply_transpose(&self, g: &mut [f32], p: usize) {
        let h = self.half;
        let (c, s) = (&self.cos[p * h..(p + 1) * h], &self.sin[p * h..(p + 1) * h]);
        for i in 0..h {
            let (a, b) = (g[i], g[i + h]);
            g[i] = a * c[i] + b * s[i];
            g[i + h] = b * c[i] - a * s[i];
        }
    }
}
