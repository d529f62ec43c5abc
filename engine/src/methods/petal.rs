//! PETAL (Brahma & Rai, CVPR 2023): CoTTA's student, EMA teacher and anchor (see `cotta.rs`:
//! augmentation-averaged teacher targets when the anchor's confidence is below `ap`, teacher
//! predictions), with two changes from the official code:
//!
//! - a Gaussian prior toward the source weights enters the loss: `spw · Σ (θ − θ_source)²`
//!   (weight 1e-9 in the CIFAR configuration);
//! - instead of CoTTA's stochastic restore, after each step every weight element whose Fisher
//!   information (its squared gradient in this step) is below the `perc` (3 %) quantile of all
//!   elements' is restored to its source value.
//!
//! The official prior is the diagonal SWAG posterior of the source training run. Attune's
//! source models come without one, so the prior here has unit variance: the penalty is the plain
//! squared distance to the source weights, scaled by `spw`. With the official weight 1e-9 the
//! term is tiny either way.

use super::cotta::{Cotta, Restore, TeacherCfg};
use super::{MethodEnv, MethodSpec};
use crate::error::Result;
use crate::models::Model;

pub fn petal(model: Model, spec: &MethodSpec, env: &MethodEnv) -> Result<Cotta> {
    let MethodSpec::Petal {
        optimizer,
        mt,
        ap,
        n_augmentations,
        spw,
        perc,
        hflip,
    } = spec
    else {
        unreachable!("petal with {spec:?}")
    };
    Cotta::with(
        model,
        TeacherCfg {
            name: "petal",
            optimizer: optimizer.clone(),
            mt: *mt,
            ap: *ap,
            n_augmentations: *n_augmentations,
            hflip: *hflip,
            restore: Restore::Fisher(*perc),
            prior: *spw,
        },
        env,
    )
}
