//! [`train`] a burn classifier on batches.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Int, Tensor, TensorData};
use ndarray::Array1;

use super::TrainConfig;
use super::progress::EpochProgress;
use crate::batch::Batch;
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::metrics::check_labels;
use crate::model::{BurnClassifier, array_to_tensor, guarded, tensor_to_array};

/// What one epoch of training measured.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochStats {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's samples.
    pub loss: f64,
    /// Training accuracy over the epoch (with dropout active, as Keras
    /// reports it).
    pub accuracy: f64,
    /// Accuracy on the validation batches after the epoch, if given.
    pub validation_accuracy: Option<f64>,
    /// The learning rate of the epoch's last step.
    pub learning_rate: f64,
    /// Samples trained on.
    pub samples: usize,
    /// Wall time of the epoch's optimisation steps (validation and
    /// checkpoints excluded).
    pub seconds: f64,
}

/// The outcome of [`train`]: the network after the last epoch, in inference
/// mode, and the per-epoch history.
#[derive(Debug, Clone)]
pub struct Trained<M> {
    /// The network after the last epoch, in inference mode on the device it
    /// was given on. The best epoch's weights are in the `best` checkpoint
    /// when a save directory was set.
    pub model: M,
    /// One entry per epoch.
    pub history: Vec<EpochStats>,
    /// The epoch (from 1) with the best validation accuracy, or the best
    /// training accuracy when there were no validation batches.
    pub best_epoch: usize,
}

impl<M> Trained<M> {
    /// Total wall time of the optimisation steps, in seconds.
    pub fn train_seconds(&self) -> f64 {
        self.history.iter().map(|e| e.seconds).sum()
    }

    /// Training throughput over the whole run, in samples per second.
    pub fn samples_per_second(&self) -> f64 {
        let samples: usize = self.history.iter().map(|e| e.samples).sum();
        samples as f64 / self.train_seconds().max(f64::MIN_POSITIVE)
    }
}

/// Which checkpoint of a save directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// The epoch with the best validation accuracy (training accuracy when
    /// the run had no validation batches).
    Best,
    /// The last epoch.
    Last,
}

impl Checkpoint {
    /// The checkpoint's file in `dir` (burn's burnpack format).
    pub fn path(self, dir: impl AsRef<Path>) -> PathBuf {
        let name = match self {
            Checkpoint::Best => "best.bpk",
            Checkpoint::Last => "last.bpk",
        };
        dir.as_ref().join(name)
    }
}

/// Loads the weights saved at `path` (a [`Checkpoint::path`], or any
/// burnpack file of the same network) into `module`, a freshly built network
/// of the same architecture.
pub fn load_checkpoint<M: Module>(module: M, path: impl AsRef<Path>) -> Result<M> {
    let path = path.as_ref();
    if path.is_dir() {
        return Err(Error::InvalidParameter {
            name: "path",
            value: path.display().to_string(),
            reason: "is a directory: name the checkpoint file in it (Checkpoint::Last.path(dir))"
                .into(),
        });
    }
    if !path.is_file() {
        return Err(Error::MissingFile {
            path: path.to_path_buf(),
            hint: "train with TrainConfig::with_save_dir to write checkpoints there".into(),
        });
    }
    module.try_load_file(path).map_err(|e| Error::CorruptFile {
        path: path.to_path_buf(),
        offset: None,
        reason: format!("not a checkpoint of this network: {e}"),
    })
}

/// Trains `module` with Adam on cross-entropy over the logits, for
/// `config.epochs` passes over `train_batches`, which must carry class
/// labels in `0..num_classes`.
///
/// Each epoch `k` iterates pass `k` of the batches
/// ([`BatchSource::batches_for_pass`]), so a shuffled stream gives the same
/// permutations on every run. With the same seed, backend and thread count,
/// two runs from the same initial weights end with the same weights. Seed
/// the device (`device.seed(s)`) before building the network to make its
/// initial weights repeatable too.
///
/// When `validation` is given, its accuracy is measured after every epoch.
/// When `config.save_dir` is set, the `last` and `best` checkpoints are
/// written there ([`Checkpoint`]; load them with [`load_checkpoint`]).
///
/// Errors, before or during the run: an invalid config, no batches, a batch
/// without labels, a label outside `0..num_classes`, inputs the network
/// cannot take (the burn panic is caught and reported), a loss that is not
/// finite, a checkpoint that cannot be written.
///
/// ```
/// use burn::tensor::Device;
/// use ndarray::{Array1, Array4};
/// use oodkit::datasets::{OodDataset, PrepareConfig};
/// use oodkit::model::{BurnModel, evaluate};
/// use oodkit::nets::ToyMlpConfig;
/// use oodkit::training::{TrainConfig, train};
///
/// // Two classes: dark images (label 0) and bright ones (label 1).
/// let inputs = Array4::from_shape_fn((64, 1, 4, 4), |(i, _, _, _)| (i % 2) as f32);
/// let labels = Array1::from_shape_fn(64, |i| (i % 2) as i64);
/// let data = OodDataset::from_arrays(inputs, labels)?;
/// let batches = data.prepare(&PrepareConfig::new(16).shuffle(0))?;
///
/// let device = Device::flex();
/// let network = ToyMlpConfig::new(1, 4, 2).init(&device)?;
/// let trained = train(network, &batches, None, &TrainConfig::new(10).with_progress(false))?;
/// assert_eq!(trained.history.len(), 10);
/// let accuracy = evaluate(&BurnModel::new(trained.model, &device), &data)?;
/// assert_eq!(accuracy, 1.0);
/// # Ok::<(), oodkit::Error>(())
/// ```
pub fn train<M: BurnClassifier>(
    module: M,
    train_batches: &dyn BatchSource,
    validation: Option<&dyn BatchSource>,
    config: &TrainConfig,
) -> Result<Trained<M>> {
    config.validate()?;
    let device = module
        .devices()
        .into_iter()
        .next()
        .ok_or_else(|| Error::InvalidParameter {
            name: "module",
            value: "a module without parameters".into(),
            reason: "there is nothing to train".into(),
        })?;
    let num_batches = match train_batches.num_batches() {
        Some(n) => n,
        None => train_batches.batches()?.count(),
    };
    if num_batches == 0 {
        return Err(empty_training_set());
    }
    if let Some(dir) = &config.save_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }

    let autodiff = device.clone().autodiff();
    autodiff.seed(config.seed);
    let mut model = module.fork(&autodiff).train();
    let mut optimizer = AdamConfig::new()
        .with_beta_1(config.beta_1)
        .with_beta_2(config.beta_2)
        .with_epsilon(config.epsilon)
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(&autodiff);
    let total_steps = num_batches * config.epochs;

    let mut history: Vec<EpochStats> = Vec::with_capacity(config.epochs);
    let mut best: Option<(usize, f64)> = None;
    let mut step = 0;
    for epoch in 1..=config.epochs {
        let progress = EpochProgress::new(config.progress, epoch, config.epochs, num_batches);
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut samples) = (0.0_f64, 0_usize, 0_usize);
        let mut learning_rate = config.learning_rate;
        for batch in train_batches.batches_for_pass(epoch as u64 - 1)? {
            let (inputs, labels) = split_labelled(batch?)?;
            let n = labels.len();
            let shape = inputs.shape().to_vec();
            let x = array_to_tensor(inputs, &autodiff);
            let logits = guarded("training", &shape, || model.logits(x))?;
            let [rows, classes] = logits.dims();
            if rows != n {
                return Err(Error::ShapeMismatch {
                    what: "logits of a training batch".into(),
                    expected: format!("{n} rows, one per input"),
                    found: format!("{rows} rows"),
                });
            }
            check_labels(labels.view(), classes)?;
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [n]), &autodiff);
            let loss = loss_fn.forward(logits.clone(), targets);
            let batch_loss = f64::from(read_scalar(loss.clone())?);
            if !batch_loss.is_finite() {
                return Err(Error::NotANumber {
                    what: "training loss".into(),
                    index: step,
                    hint: format!(
                        "the loss became {batch_loss} at step {step} (epoch {epoch}): lower the \
                         learning rate or check the inputs are scaled (e.g. to [0, 1])"
                    ),
                });
            }
            correct += count_correct(logits.detach(), &labels)?;
            loss_sum += batch_loss * n as f64;
            samples += n;

            learning_rate = config
                .schedule
                .rate(config.learning_rate, step, total_steps);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(learning_rate, model, grads);
            step += 1;
            progress.step(loss_sum / samples as f64, correct as f64 / samples as f64);
        }
        if samples == 0 {
            return Err(empty_training_set());
        }
        let seconds = started.elapsed().as_secs_f64();
        let validation_accuracy = match validation {
            Some(batches) => Some(accuracy_of(&model.valid(), &device, batches)?),
            None => None,
        };
        let stats = EpochStats {
            epoch,
            loss: loss_sum / samples as f64,
            accuracy: correct as f64 / samples as f64,
            validation_accuracy,
            learning_rate,
            samples,
            seconds,
        };
        progress.finish(&stats);

        let score = stats.validation_accuracy.unwrap_or(stats.accuracy);
        let improved = best.is_none_or(|(_, best_score)| score > best_score);
        if improved {
            best = Some((epoch, score));
        }
        if let Some(dir) = &config.save_dir {
            save(&model, Checkpoint::Last.path(dir))?;
            if improved {
                save(&model, Checkpoint::Best.path(dir))?;
            }
        }
        history.push(stats);
    }
    Ok(Trained {
        model: model.valid().to_device(&device),
        history,
        best_epoch: best.map_or(config.epochs, |(epoch, _)| epoch),
    })
}

/// Accuracy of a module (already in inference mode) on `batches`.
fn accuracy_of<M: BurnClassifier>(
    module: &M,
    device: &burn::tensor::Device,
    batches: &dyn BatchSource,
) -> Result<f64> {
    crate::model::evaluate(
        &crate::model::BurnModel::new(module.clone(), device),
        batches,
    )
}

/// The inputs and labels of a training batch, which must carry labels.
fn split_labelled(batch: Batch) -> Result<(ndarray::Array4<f32>, Array1<i64>)> {
    match batch.labels {
        Some(labels) => Ok((batch.inputs, labels)),
        None => Err(Error::missing(
            "class labels of the training batches",
            "training needs labels: prepare a labelled dataset (with_labels(true))",
        )),
    }
}

/// How many rows of `logits` have their largest value at the label (the
/// crate's one argmax, read back on the host: a few hundred values).
fn count_correct(logits: Tensor<2>, labels: &Array1<i64>) -> Result<usize> {
    crate::metrics::count_correct(tensor_to_array(logits)?.view(), labels.view())
}

/// The value of a one-element tensor.
fn read_scalar(tensor: Tensor<1>) -> Result<f32> {
    tensor
        .try_into_scalar::<f32>()
        .map_err(|e| Error::backend_with("reading the loss back", e))
}

/// Writes the module's weights to `path`.
fn save<M: Module>(module: &M, path: PathBuf) -> Result<()> {
    module
        .clone()
        .save_file(&path)
        .map_err(|e| Error::backend_with(format!("writing checkpoint {}", path.display()), e))
}

fn empty_training_set() -> Error {
    Error::Empty {
        what: "training batches".into(),
        hint: "there is nothing to train on (did a split leave this side empty?)".into(),
    }
}
