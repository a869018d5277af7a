//! The networks, on burn: the small networks of the Python toolkit's
//! tutorials ([`ToyConvnet`], [`ToyMlp`]) and the CIFAR ResNets of the
//! reference study ([`CifarResNet`], with
//! [`CifarResNet::from_safetensors`] for their pretrained PyTorch weights).
//!
//! Each is a [`BurnClassifier`](crate::model::BurnClassifier): through
//! [`BurnModel`](crate::model::BurnModel) it is a
//! [`FeatureModel`](crate::model::FeatureModel) for every detector, and
//! [`training::train`](crate::training::train) fits it.

mod init;
mod resnet;
mod resnet_inference;
mod toy_convnet;
mod toy_convnet_inference;
mod toy_mlp;

pub use resnet::{
    BasicBlock, CIFAR_RESNET_DEPTHS, CifarResNet, CifarResNetConfig, option_a_shortcut,
};
pub use toy_convnet::{ToyConvnet, ToyConvnetConfig};
pub use toy_mlp::{ToyMlp, ToyMlpConfig};
