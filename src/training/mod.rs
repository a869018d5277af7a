//! Networks and their trainer, on burn.
//!
//! [`ToyConvnet`] and [`ToyMlp`] are the small networks of the Python
//! toolkit's tutorials. [`train`] fits any [`BurnClassifier`] with Adam on
//! cross-entropy (the reference notebook's recipe), on whichever burn device
//! the network was built on (`Device::flex()`, the pure-Rust CPU backend, by
//! default). The trained network is a [`Model`](crate::model::Model) through
//! [`BurnModel`](crate::model::BurnModel), ready for every detector;
//! [`evaluate`] measures any model's accuracy.
//!
//! [`BurnClassifier`]: crate::model::BurnClassifier

mod config;
mod conv;
mod max_pool;
mod progress;
mod resnet;
mod toy_convnet;
mod toy_mlp;
mod trainer;

pub use config::{LrSchedule, TrainConfig};
pub use resnet::{
    BasicBlock, CIFAR_RESNET_DEPTHS, CifarResNet, CifarResNetConfig, IMAGENET_MEAN, IMAGENET_STD,
    imagenet_preprocess, option_a_shortcut,
};
pub use toy_convnet::{ToyConvnet, ToyConvnetConfig};
pub use toy_mlp::{ToyMlp, ToyMlpConfig};
pub use trainer::{Checkpoint, EpochStats, Trained, evaluate, load_checkpoint, train};
