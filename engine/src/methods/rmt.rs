//! RMT, the robust mean teacher (Döbler et al., CVPR 2023), source-free variant (no warm-up on
//! source data, no source replay), following the reference implementation:
//!
//! - student (every weight trained) and an EMA teacher (momentum `mt` 0.999), BatchNorm on batch
//!   statistics; a projector (linear D → 128, ReLU, linear 128 → 128, seeded init) trained with
//!   the student;
//! - source class prototypes: the mean penultimate feature per class of `source_samples` clean
//!   training images (source model, batch statistics, batches of the job's batch size);
//! - per batch: student features/logits on x and on one augmented view x′ (see `augment`),
//!   teacher logits on x; for each test feature the prototype with the highest cosine similarity;
//! - contrastive loss (SupCon without labels, all views as anchors, temperature 0.1): the three
//!   views [nearest prototype, f(x), f(x′)] of a sample are positives of each other, projected
//!   and L2-normalized;
//! - self-training loss: mean of ½·SCE(student(x), teacher(x)) + ½·SCE(student(x′), teacher(x)),
//!   SCE(s, t) = −½ Σ softmax(t)·log softmax(s) − ½ Σ softmax(s)·log softmax(t);
//! - loss = lambda_ce_trg · self-training + lambda_cont · contrastive; one step; teacher EMA;
//! - prediction: student logits + teacher logits on x (before the update).

use super::augment::tta_transform;
use super::tent::AffineLearner;
use super::{
    clean_features, host, l2_normalize, need_batch, BatchOutput, Counters, Method, MethodEnv,
    MethodSpec,
};
use crate::error::Result;
use crate::losses;
use crate::models::Model;
use crate::nn::{BnMode, Linear, ParamStore, Snapshot, VarSource};
use crate::optim::Optimizer;
use candle_core::{Tensor, D};
use rand_chacha::ChaCha8Rng;

pub struct Rmt {
    core: AffineLearner,
    teacher: Model,
    teacher_initial: Snapshot,
    proj: (Linear, Linear),
    proj_store: ParamStore,
    proj_initial: Snapshot,
    /// (C, D) source class prototypes.
    prototypes: Tensor,
    mt: f64,
    lambda_ce_trg: f64,
    lambda_cont: f64,
    temperature: f64,
    hflip: bool,
    seed: u64,
    rng: ChaCha8Rng,
    fixed_view: Option<Tensor>,
}

impl Rmt {
    pub fn new(model: Model, spec: &MethodSpec, env: &MethodEnv) -> Result<Self> {
        let MethodSpec::Rmt {
            optimizer,
            mt,
            lambda_ce_trg,
            lambda_cont,
            temperature,
            projection_dim,
            source_samples,
            hflip,
        } = spec
        else {
            unreachable!("Rmt::new with {spec:?}")
        };
        let clean = env.clean_set("rmt")?;
        let classes = model.info().num_classes;
        let (feats, labels, dim) = clean_features(
            &model,
            clean,
            *source_samples,
            env.batch_size,
            BnMode::Batch,
        )?;
        let mut protos = vec![0f32; classes * dim];
        let mut counts = vec![0usize; classes];
        for (i, &y) in labels.iter().enumerate() {
            let y = y as usize;
            counts[y] += 1;
            for (p, f) in protos[y * dim..(y + 1) * dim]
                .iter_mut()
                .zip(&feats[i * dim..(i + 1) * dim])
            {
                *p += f;
            }
        }
        for (c, n) in counts.iter().enumerate() {
            if *n > 0 {
                protos[c * dim..(c + 1) * dim]
                    .iter_mut()
                    .for_each(|p| *p /= *n as f32);
            }
        }
        let prototypes = Tensor::from_vec(protos, (classes, dim), model.device())?;
        let mut vs = VarSource::init(crate::rng::derive(env.seed, &[7]), model.device());
        let l1 = Linear::new(&mut vs, "projector.0", dim, *projection_dim)?;
        let l2 = Linear::new(&mut vs, "projector.2", *projection_dim, *projection_dim)?;
        let proj_store = vs.finish();
        let mut core = AffineLearner::with(model, optimizer.clone(), "rmt", |_| true)?;
        let mut params = core.model.store().trainable();
        params.extend(proj_store.params().iter().cloned());
        core.opt = Optimizer::new(optimizer.clone(), params)?;
        let teacher = (env.load_source)()?;
        teacher.store().set_trainable(|_| false);
        Ok(Self {
            teacher_initial: teacher.store().snapshot()?,
            proj_initial: proj_store.snapshot()?,
            core,
            teacher,
            proj: (l1, l2),
            proj_store,
            prototypes,
            mt: *mt,
            lambda_ce_trg: *lambda_ce_trg,
            lambda_cont: *lambda_cont,
            temperature: *temperature,
            hflip: *hflip,
            seed: env.seed,
            rng: crate::rng::rng(env.seed, "rmt/augment"),
            fixed_view: None,
        })
    }

    #[cfg(test)]
    pub fn set_fixed_view(&mut self, v: Tensor) {
        self.fixed_view = Some(v);
    }

    #[cfg(test)]
    pub fn teacher(&self) -> &Model {
        &self.teacher
    }

    #[cfg(test)]
    pub fn projector(&self) -> &ParamStore {
        &self.proj_store
    }

    /// SupCon loss over `views` (V tensors of (B, D)): the views of one sample are positives.
    fn contrastive(&self, views: &[Tensor]) -> Result<Tensor> {
        let b = views[0].dim(0)?;
        let v = views.len();
        let all = Tensor::cat(views, 0)?; // (V·B, D), view-major as torch.cat(unbind(dim=1))
        let z = l2_normalize(&self.proj.1.forward(&self.proj.0.forward(&all)?.relu()?)?)?;
        let logits = z.matmul(&z.t()?)?.affine(1.0 / self.temperature, 0.0)?;
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let logits = logits.broadcast_sub(&max)?;
        let n = v * b;
        let mut pos = vec![0f32; n * n];
        let mut not_self = vec![1f32; n * n];
        for i in 0..n {
            not_self[i * n + i] = 0.0;
            for j in 0..n {
                if i != j && i % b == j % b {
                    pos[i * n + j] = 1.0;
                }
            }
        }
        let dev = logits.device();
        let pos = Tensor::from_vec(pos, (n, n), dev)?;
        let not_self = Tensor::from_vec(not_self, (n, n), dev)?;
        let denom = (logits.exp()? * &not_self)?.sum_keepdim(1)?.log()?;
        let log_prob = logits.broadcast_sub(&denom)?;
        let mean_pos = ((pos * log_prob)?.sum(1)? / (v - 1) as f64)?;
        // temperature / base_temperature = 1 (the reference sets base = temperature).
        Ok(mean_pos.mean_all()?.neg()?)
    }

    fn update_teacher(&self) -> Result<()> {
        for (t, s) in self
            .teacher
            .store()
            .params()
            .iter()
            .zip(self.core.model.store().params())
        {
            let v = (t.var().as_tensor().affine(self.mt, 0.0)?
                + s.var().as_tensor().detach().affine(1.0 - self.mt, 0.0)?)?;
            t.var().set(&v)?;
        }
        Ok(())
    }
}

/// Symmetric cross-entropy per sample between logits `s` and `t`.
fn sce(s: &Tensor, t: &Tensor) -> Result<Tensor> {
    let (ls, lt) = (losses::log_softmax(s)?, losses::log_softmax(t)?);
    let a = (lt.exp()? * &ls)?.sum(1)?;
    let b = (ls.exp()? * &lt)?.sum(1)?;
    Ok((a + b)?.affine(-0.5, 0.0)?)
}

impl Method for Rmt {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        need_batch("rmt", x)?;
        let (f, out) = self.core.model.forward_features(x, BnMode::Batch)?;
        let view = match &self.fixed_view {
            Some(v) => v.clone(),
            None => tta_transform(x, self.hflip, &mut self.rng)?,
        };
        let (fa, outa) = self.core.model.forward_features(&view, BnMode::Batch)?;
        let out_ema = self.teacher.forward(x, BnMode::Batch)?.detach();
        let pred = host(&(out.detach() + &out_ema)?)?;
        // Nearest source prototype (cosine) of every test feature.
        let sims = l2_normalize(&f.detach())?.matmul(&l2_normalize(&self.prototypes)?.t()?)?;
        let idx = sims.argmax(1)?;
        let near = self.prototypes.index_select(&idx, 0)?;
        let cont = self.contrastive(&[near, f, fa])?;
        let st = ((sce(&out, &out_ema)? + sce(&outa, &out_ema)?)?.affine(0.5, 0.0)?).mean_all()?;
        let loss = (st.affine(self.lambda_ce_trg, 0.0)? + cont.affine(self.lambda_cont, 0.0)?)?;
        self.core.counters.samples_used += x.dim(0)? as u64;
        let skipped = self.core.step(&loss)?;
        if !skipped {
            self.update_teacher()?;
        }
        Ok(BatchOutput {
            logits: pred,
            skipped_update: skipped,
        })
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        need_batch("rmt", x)?;
        let s = self.core.model.forward(x, BnMode::Batch)?;
        host(&(s + self.teacher.forward(x, BnMode::Batch)?)?)
    }

    fn reset(&mut self) -> Result<()> {
        self.teacher.store().restore(&self.teacher_initial)?;
        self.proj_store.restore(&self.proj_initial)?;
        self.rng = crate::rng::rng(self.seed, "rmt/augment");
        self.core.reset()
    }

    fn adapted_parameters(&self) -> Vec<String> {
        let mut v = self.core.adapted_parameters();
        v.extend(
            self.proj_store
                .params()
                .iter()
                .map(|p| p.name().to_string()),
        );
        v
    }

    fn counters(&self) -> Counters {
        self.core.counters
    }

    fn model(&self) -> &Model {
        &self.core.model
    }
}
