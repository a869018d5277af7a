//! Test inputs shared by the kernels' tests.

use super::BatchNormStats;
use super::padded_conv3x3::Isa;

/// Deterministic values in [-1, 1), different for each seed.
pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| {
            let v = (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 40_503)) % 2000;
            v as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Batch-norm statistics for `channels` channels, far from the identity
/// (variances in [0.5, 1.5)), owned so that tests can borrow them.
pub(crate) struct TestBatchNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl TestBatchNorm {
    pub(crate) fn new(channels: usize) -> Self {
        TestBatchNorm {
            gamma: values(channels, 3),
            beta: values(channels, 4),
            mean: values(channels, 5),
            var: values(channels, 6).iter().map(|v| v.abs() + 0.5).collect(),
        }
    }

    pub(crate) fn stats(&self) -> BatchNormStats<'_> {
        BatchNormStats {
            gamma: &self.gamma,
            beta: &self.beta,
            mean: &self.mean,
            var: &self.var,
            epsilon: 1e-5,
        }
    }
}

/// Every instruction set this CPU can run the kernels with.
pub(crate) fn isas() -> Vec<Isa> {
    let mut isas = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            isas.push(Isa::Avx2);
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            isas.push(Isa::Avx512);
        }
    }
    isas
}
