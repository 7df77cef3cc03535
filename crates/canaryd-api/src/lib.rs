//! The Kubernetes-facing types canaryd owns (`Canary`) and the narrow views of foreign
//! resources it touches (`VirtualService`, `ReferenceGrant`). Pure data and validation; no client calls.
#![forbid(unsafe_code)]

pub mod canary;
pub mod compact;
pub mod crd;
pub mod duration;
pub mod limits;
pub mod reference_grant;
pub mod release;
pub mod validation;
pub mod virtual_service;

pub use canary::*;
pub use duration::HumanDuration;
pub use validation::{validate, SpecError};
