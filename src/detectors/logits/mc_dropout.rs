//! Monte Carlo dropout (Gal & Ghahramani, ICML 2016): the uncertainty of
//! the mean softmax over stochastic forward passes.

use serde::{Deserialize, Serialize};

use ndarray::{Array1, Array2, ArrayView2};

use super::{ScoreLogits, StoredLogits, check_logits_width, shifted_exps};
use crate::batch::Batch;
use crate::datasets::BatchSource;
use crate::detectors::registry::{Capability, Needs, Param, Registration, built, load_as};
use crate::detectors::{Detector, ScoreOutput};
use crate::error::{Error, Result};
use crate::model::{Model, check_logits, stochastic_of};

/// What McDropout reads off the mean softmax p̄.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McStatistic {
    /// The predictive entropy −Σ p̄ ln p̄ (the default).
    Entropy,
    /// Minus the largest mean probability, −max p̄ (MSP of the mean).
    Msp,
}

/// McDropout: `passes` forward passes of each input with the network's
/// dropout active, the mean of their softmax p̄, and its entropy
/// (default) or −max p̄ as the score (higher = more OOD).
///
/// Defaults: 30 passes, entropy, seed 0. The masks are drawn from `seed`
/// ([`dropout_mask`](crate::model::dropout_mask), a generator of their
/// own), one mask per pass shared by every input of a batch, so an input
/// scores alike every time, on any thread, in a batch of any size. OpenOOD's `mcd` postprocessor is
/// another method (two classifier heads trained apart); this is the
/// Monte Carlo form. It needs the network itself
/// ([`StochasticPasses::forward_stochastic`](crate::model::StochasticPasses::forward_stochastic): a `BurnModel` of `ToyConvnet`, or of a
/// module implementing `BurnClassifier::stochastic_logits`); other models,
/// and networks without dropout (the CIFAR ResNets), are an
/// [`Error::Unsupported`] saying so. It learns nothing: `fit(&model, None)`.
///
/// ```
/// # #[cfg(feature = "burn")] {
/// use burn::tensor::Device;
/// use oodkit::detectors::{Detector, McDropout, McStatistic};
/// use oodkit::model::BurnModel;
/// use oodkit::nets::ToyConvnetConfig;
///
/// let device = Device::flex();
/// let model = BurnModel::new(ToyConvnetConfig::new(1, 28, 5).init(&device)?, &device);
/// let scorer = McDropout::new(8, McStatistic::Msp)?.fit(&model, None)?;
/// let batch = oodkit::Batch::new(ndarray::Array4::ones((2, 1, 28, 28)));
/// let scores = scorer.score(&batch)?.scores;
/// assert!(scores.iter().all(|s| (-1.0..=-0.2).contains(s))); // −max p̄ of 5 classes
/// # }
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct McDropout {
    passes: usize,
    statistic: McStatistic,
    seed: u64,
}

impl Default for McDropout {
    /// 30 passes, the entropy, seed 0.
    fn default() -> Self {
        McDropout {
            passes: 30,
            statistic: McStatistic::Entropy,
            seed: 0,
        }
    }
}

impl McDropout {
    /// The most passes: each costs a forward pass of every input.
    pub const MAX_PASSES: usize = 10_000;

    /// Monte Carlo dropout over `passes` passes (1 to
    /// [`MAX_PASSES`](Self::MAX_PASSES)), scoring `statistic`.
    pub fn new(passes: usize, statistic: McStatistic) -> Result<Self> {
        let mc = McDropout {
            passes,
            statistic,
            ..McDropout::default()
        };
        mc.validate()?;
        Ok(mc)
    }

    /// The same with the dropout masks seeded by `seed`.
    pub fn with_seed(self, seed: u64) -> Self {
        McDropout { seed, ..self }
    }

    /// The number of passes.
    pub fn passes(&self) -> usize {
        self.passes
    }

    /// What is read off the mean softmax.
    pub fn statistic(&self) -> McStatistic {
        self.statistic
    }

    /// The seed of the masks.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The score of each row of the mean softmax `(N, C)`.
    fn score_mean(&self, mean: &Array2<f64>) -> Array1<f32> {
        mean.rows()
            .into_iter()
            .map(|p| match self.statistic {
                McStatistic::Entropy => p
                    .iter()
                    .filter(|&&v| v > 0.0)
                    .map(|&v| -v * v.ln())
                    .sum::<f64>() as f32,
                McStatistic::Msp => -p.iter().copied().fold(0.0, f64::max) as f32,
            })
            .collect()
    }
}

impl Detector for McDropout {
    type Fitted = McDropout;

    /// Keeps the parameters: Monte Carlo dropout learns nothing of the
    /// data. Errors when the model cannot run with dropout active.
    fn fit_model(
        &self,
        model: &dyn Model,
        _fit_data: Option<&dyn BatchSource>,
    ) -> Result<McDropout> {
        self.check_model(model)?;
        Ok(*self)
    }
}

impl ScoreLogits for McDropout {
    fn name(&self) -> &'static str {
        "MCDropout"
    }

    /// An error: the score needs stochastic passes through the network.
    fn score_logits(&self, _logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        Err(Error::Unsupported {
            what: "Monte Carlo dropout on precomputed logits".into(),
            hint: "it runs the network with dropout active: score through the model".into(),
        })
    }

    fn check_model(&self, model: &dyn Model) -> Result<()> {
        stochastic_of(model, "Monte Carlo dropout").map(|_| ())
    }

    /// The passes' mean softmax, scored; the logits returned are those of
    /// the network in inference mode.
    fn score_logit_batch(&self, model: &dyn Model, batch: Batch) -> Result<ScoreOutput> {
        let n = batch.len();
        let passes = stochastic_of(model, "Monte Carlo dropout")?.forward_stochastic(
            batch.inputs.view(),
            self.passes,
            self.seed,
        )?;
        let mut mean: Option<Array2<f64>> = None;
        for logits in &passes {
            check_logits(logits, n)?;
            let width = mean.as_ref().map_or(logits.ncols(), Array2::ncols);
            check_logits_width(logits, width)?;
            let sum = mean.get_or_insert_with(|| Array2::zeros(logits.dim()));
            for (mut out, row) in sum.rows_mut().into_iter().zip(logits.rows()) {
                if row.iter().any(|v| v.is_nan()) {
                    return Err(Error::numerical(
                        "a dropout pass",
                        "the network produced NaN logits",
                    ));
                }
                let (_, exps) = shifted_exps(row);
                let total: f64 = exps.iter().map(|&e| f64::from(e)).sum();
                out.zip_mut_with(&Array1::from(exps), |o, &e| *o += f64::from(e) / total);
            }
        }
        let mean = mean.ok_or_else(|| Error::custom("no dropout pass ran"))? / passes.len() as f64;
        let scores = self.score_mean(&mean);
        let logits = model.forward_owned(batch.inputs)?;
        check_logits(&logits, n)?;
        Ok(ScoreOutput {
            scores,
            logits,
            labels: batch.labels,
        })
    }

    /// It needs the whole network, not only its logits.
    fn perturbs_inputs(&self) -> bool {
        true
    }
}

impl StoredLogits for McDropout {
    const KINDS: &'static [&'static str] = &["MCDropout"];

    fn validate(&self) -> Result<()> {
        if !(1..=Self::MAX_PASSES).contains(&self.passes) {
            return Err(Error::invalid(
                "passes",
                self.passes,
                format!("must be in 1..={} (tens are usual)", Self::MAX_PASSES),
            ));
        }
        Ok(())
    }
}

/// MC dropout in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "MCDropout",
    "mcdropout",
    "Monte Carlo dropout: the entropy of the mean softmax of 30 passes with dropout active \
     (needs the network itself, with dropout)",
    &[
        Param {
            name: "passes",
            doc: "the stochastic passes [default: 30]",
        },
        Param {
            name: "statistic",
            doc: "entropy or msp, of the mean softmax [default: entropy]",
        },
        Param {
            name: "seed",
            doc: "the dropout masks' seed [default: 0]",
        },
    ],
    Needs {
        fit_data: false,
        labels: false,
        capabilities: &[Capability::StochasticPasses],
    },
    |p| {
        let default = McDropout::default();
        let statistic = match p.text("statistic")? {
            None => default.statistic(),
            Some("entropy") => McStatistic::Entropy,
            Some("msp") => McStatistic::Msp,
            Some(other) => {
                return Err(Error::invalid("statistic", other, "must be entropy or msp"));
            }
        };
        let passes = p.count("passes")?.unwrap_or(default.passes());
        let seed = p.count("seed")?.map_or(default.seed(), |s| s as u64);
        built(McDropout::new(passes, statistic)?.with_seed(seed))
    },
    load_as::<McDropout>,
);
