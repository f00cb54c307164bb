//! Distinct SYN sources: HyperLogLog registers filled in the kernel (per CPU, one bank
//! a second), merged and estimated here over a sliding window.

use std::collections::VecDeque;

use monitor_common::syn::{HLL_P, HLL_REGS};

pub type Registers = [u8; HLL_REGS];

/// Ertl's improved raw estimator ("New cardinality estimation algorithms for
/// HyperLogLog sketches", 2017): unbiased from a handful of elements to billions,
/// without the empirical bias tables and range switches of the original.
pub fn estimate(regs: &Registers) -> f64 {
    let q = 64 - HLL_P as usize;
    let m = HLL_REGS as f64;
    let mut hist = vec![0u32; q + 2];
    for r in regs {
        hist[(*r as usize).min(q + 1)] += 1;
    }
    let mut z = m * tau(1.0 - hist[q + 1] as f64 / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + hist[k] as f64);
    }
    z += m * sigma(hist[0] as f64 / m);
    if z.is_infinite() {
        return 0.0;
    }
    m * m / (2.0 * std::f64::consts::LN_2) / z
}

fn sigma(x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut x, mut y, mut z) = (x, 1.0, x);
    loop {
        x *= x;
        let prev = z;
        z += x * y;
        y += y;
        if z == prev {
            return z;
        }
    }
}

fn tau(x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut x, mut y, mut z) = (x, 1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let prev = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == prev {
            return z / 3.0;
        }
    }
}

/// Max-merges `other` into `into` (the union of the two sets).
pub fn merge(into: &mut Registers, other: &Registers) {
    for (a, b) in into.iter_mut().zip(other.iter()) {
        *a = (*a).max(*b);
    }
}

/// The last `secs` one-second register snapshots of one slot.
#[derive(Clone, Debug)]
pub struct Window {
    secs: usize,
    seconds: VecDeque<Box<Registers>>,
}

impl Window {
    pub fn new(secs: usize) -> Window {
        Window {
            secs: secs.max(1),
            seconds: VecDeque::new(),
        }
    }

    /// Adds a finished second; the oldest falls out of the window.
    pub fn push(&mut self, second: Box<Registers>) {
        self.seconds.push_back(second);
        while self.seconds.len() > self.secs {
            self.seconds.pop_front();
        }
    }

    /// The union of the window and `live` (seconds still being written).
    pub fn union(&self, live: &[&Registers]) -> Box<Registers> {
        let mut all = Box::new([0u8; HLL_REGS]);
        for s in self
            .seconds
            .iter()
            .map(|b| &**b)
            .chain(live.iter().copied())
        {
            merge(&mut all, s);
        }
        all
    }

    pub fn is_empty(&self) -> bool {
        self.seconds.iter().all(|s| s.iter().all(|r| *r == 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::syn::{hll_add, source_hash};

    fn filled(n: u32, seed: u64) -> Box<Registers> {
        let mut r = Box::new([0u8; HLL_REGS]);
        for i in 0..n {
            hll_add(&mut r, source_hash(seed, 4, &[i, i.rotate_left(7), 0, 0]));
        }
        r
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(estimate(&[0; HLL_REGS]), 0.0);
    }

    #[test]
    fn estimates_within_four_standard_errors_across_the_range() {
        // Standard error 1.04/sqrt(8192) = 1.15 %.
        for (i, n) in [
            1u32, 10, 100, 1_000, 5_000, 20_000, 60_000, 250_000, 1_000_000,
        ]
        .into_iter()
        .enumerate()
        {
            let e = estimate(&filled(n, 1000 + i as u64));
            let err = (e - n as f64).abs() / n as f64;
            let allowed = if n < 100 { 0.1 } else { 0.046 };
            assert!(
                err < allowed,
                "n={n}: estimate {e:.0} ({:.2} %)",
                err * 100.0
            );
        }
    }

    #[test]
    fn union_counts_each_source_once() {
        let a = filled(30_000, 5);
        let b = filled(30_000, 5);
        let mut w = Window::new(10);
        w.push(a);
        w.push(b);
        let e = estimate(&w.union(&[]));
        assert!((e - 30_000.0).abs() < 1_500.0, "{e}");
    }

    #[test]
    fn the_window_forgets_old_seconds() {
        let mut w = Window::new(2);
        w.push(filled(10_000, 1));
        w.push(filled(100, 2));
        w.push(filled(100, 3));
        let e = estimate(&w.union(&[]));
        assert!(e < 300.0, "{e}");
    }
}
