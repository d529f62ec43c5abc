//! Layers, parameters and the parameter store that models are built from.
//!
//! Every learnable tensor is a [`Param`]: a candle `Var` with a name (the safetensors key), a
//! kind, and a `trainable` switch. A frozen parameter enters the graph detached, so backward
//! computes nothing for it. BatchNorm running statistics are buffers: saved and restored with the
//! model, never trained.

use crate::error::{EngineError, Result};
use crate::ops::{self, BnStats};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    ConvWeight,
    LinearWeight,
    LinearBias,
    /// BatchNorm γ.
    NormWeight,
    /// BatchNorm β.
    NormBias,
}

impl ParamKind {
    /// The BatchNorm affine parameters: what TENT and its relatives adapt.
    pub fn is_norm_affine(self) -> bool {
        matches!(self, ParamKind::NormWeight | ParamKind::NormBias)
    }
}

struct ParamInner {
    name: String,
    kind: ParamKind,
    var: Var,
    trainable: AtomicBool,
}

/// A named, learnable tensor. Cloning shares the same storage.
#[derive(Clone)]
pub struct Param(Arc<ParamInner>);

impl Param {
    pub fn name(&self) -> &str {
        &self.0.name
    }
    pub fn kind(&self) -> ParamKind {
        self.0.kind
    }
    pub fn var(&self) -> &Var {
        &self.0.var
    }
    pub fn trainable(&self) -> bool {
        self.0.trainable.load(Ordering::Relaxed)
    }
    pub fn set_trainable(&self, on: bool) {
        self.0.trainable.store(on, Ordering::Relaxed)
    }
    /// The tensor to use in a forward pass: tracked when trainable, detached otherwise.
    pub fn t(&self) -> Tensor {
        if self.trainable() {
            self.0.var.as_tensor().clone()
        } else {
            self.0.var.as_tensor().detach()
        }
    }
}

/// A named non-learnable tensor (BatchNorm running statistics), kept host-side.
#[derive(Clone)]
pub struct Buffer {
    name: String,
    value: Arc<Mutex<Vec<f32>>>,
}

impl Buffer {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn get(&self) -> Vec<f32> {
        self.value.lock().expect("buffer lock poisoned").clone()
    }
    pub fn set(&self, v: Vec<f32>) {
        *self.value.lock().expect("buffer lock poisoned") = v;
    }
}

/// Where a model's tensors come from while it is being built: a seeded initializer or a
/// loaded checkpoint. Mirrors candle's `VarBuilder` (`pp` for name prefixes) but initializes from
/// a seeded Rust RNG, since candle's CPU device RNG cannot be seeded per job.
pub struct VarSource {
    device: Device,
    init: Option<rand_chacha::ChaCha8Rng>,
    loaded: HashMap<String, Tensor>,
    origin: String,
    params: Vec<Param>,
    buffers: Vec<Buffer>,
}

/// How a freshly initialized tensor is filled.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// N(0, 2/fan): He initialization for layers followed by ReLU. Convolutions pass
    /// fan_out = C_out·k·k, as torchvision's ResNets do.
    KaimingNormal {
        fan: usize,
    },
    /// U(−1/√fan_in, 1/√fan_in): PyTorch's default for linear layers.
    Uniform {
        fan_in: usize,
    },
    Const(f32),
}

impl VarSource {
    pub fn init(seed: u64, device: &Device) -> Self {
        Self {
            device: device.clone(),
            init: Some(crate::rng::rng(seed, "model/init")),
            loaded: HashMap::new(),
            origin: "initializer".into(),
            params: vec![],
            buffers: vec![],
        }
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: &str, device: &Device) -> Self {
        Self {
            device: device.clone(),
            init: None,
            loaded: tensors,
            origin: origin.into(),
            params: vec![],
            buffers: vec![],
        }
    }

    pub fn load_safetensors(path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, device).map_err(|e| {
            EngineError::bad_file(path, format!("not a readable safetensors file: {e}"))
        })?;
        Ok(Self::from_tensors(
            tensors,
            &path.display().to_string(),
            device,
        ))
    }

    fn values(&mut self, name: &str, dims: &[usize], init: Init) -> Result<Vec<f32>> {
        let n: usize = dims.iter().product();
        if let Some(rng) = self.init.as_mut() {
            return Ok(match init {
                Init::KaimingNormal { fan } => {
                    let std = (2.0 / fan as f64).sqrt() as f32;
                    crate::rng::randn_vec(n, rng)
                        .into_iter()
                        .map(|v| v * std)
                        .collect()
                }
                Init::Uniform { fan_in } => {
                    let b = 1.0 / (fan_in as f32).sqrt();
                    (0..n).map(|_| rng.gen_range(-b..b)).collect()
                }
                Init::Const(c) => vec![c; n],
            });
        }
        let t = self.loaded.get(name).ok_or_else(|| {
            EngineError::bad_file(
                &self.origin,
                format!("tensor `{name}` is missing (expected shape {dims:?})"),
            )
        })?;
        if t.dims() != dims {
            return Err(EngineError::bad_file(
                &self.origin,
                format!(
                    "tensor `{name}` has shape {:?}, expected {dims:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    pub fn param(
        &mut self,
        name: &str,
        dims: &[usize],
        kind: ParamKind,
        init: Init,
    ) -> Result<Param> {
        let v = self.values(name, dims, init)?;
        let var = Var::from_tensor(&Tensor::from_vec(v, dims, &self.device)?)?;
        let p = Param(Arc::new(ParamInner {
            name: name.to_string(),
            kind,
            var,
            trainable: AtomicBool::new(true),
        }));
        self.params.push(p.clone());
        Ok(p)
    }

    pub fn buffer(&mut self, name: &str, len: usize, init: f32) -> Result<Buffer> {
        let v = self.values(name, &[len], Init::Const(init))?;
        let b = Buffer {
            name: name.to_string(),
            value: Arc::new(Mutex::new(v)),
        };
        self.buffers.push(b.clone());
        Ok(b)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Everything created so far, for the model's [`ParamStore`].
    pub fn finish(self) -> ParamStore {
        ParamStore {
            params: self.params,
            buffers: self.buffers,
            device: self.device,
        }
    }
}

/// All of a model's tensors, by name: enumerate, freeze, snapshot, restore, save.
#[derive(Clone)]
pub struct ParamStore {
    params: Vec<Param>,
    buffers: Vec<Buffer>,
    device: Device,
}

/// A deep copy of every parameter and buffer value: what `reset` returns to.
#[derive(Clone, Debug)]
pub struct Snapshot {
    params: Vec<Tensor>,
    buffers: Vec<Vec<f32>>,
}

impl Snapshot {
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }
}

impl ParamStore {
    pub fn params(&self) -> &[Param] {
        &self.params
    }
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Make exactly the parameters for which `f` is true trainable; returns how many are.
    pub fn set_trainable(&self, f: impl Fn(&Param) -> bool) -> usize {
        self.params
            .iter()
            .map(|p| {
                let on = f(p);
                p.set_trainable(on);
                on as usize
            })
            .sum()
    }

    pub fn trainable(&self) -> Vec<Param> {
        self.params
            .iter()
            .filter(|p| p.trainable())
            .cloned()
            .collect()
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            params: self
                .params
                .iter()
                .map(|p| p.var().as_tensor().copy())
                .collect::<candle_core::Result<_>>()?,
            buffers: self.buffers.iter().map(|b| b.get()).collect(),
        })
    }

    pub fn restore(&self, s: &Snapshot) -> Result<()> {
        for (p, t) in self.params.iter().zip(&s.params) {
            p.var().set(t)?;
        }
        for (b, v) in self.buffers.iter().zip(&s.buffers) {
            b.set(v.clone());
        }
        Ok(())
    }

    /// Every tensor by name (parameters and buffers), as saved in a checkpoint.
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut m = BTreeMap::new();
        for p in &self.params {
            m.insert(p.name().to_string(), p.var().as_tensor().clone());
        }
        for b in &self.buffers {
            let v = b.get();
            let n = v.len();
            m.insert(b.name().to_string(), Tensor::from_vec(v, n, &self.device)?);
        }
        Ok(m)
    }

    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let m: HashMap<String, Tensor> = self.tensors()?.into_iter().collect();
        candle_core::safetensors::save(&m, path)
            .map_err(|e| EngineError::bad_file(path, format!("cannot write checkpoint: {e}")))
    }

    /// True if any parameter or buffer holds a NaN or infinity.
    pub fn has_non_finite(&self) -> Result<bool> {
        for p in &self.params {
            let v = p.var().as_tensor().flatten_all()?.to_vec1::<f32>()?;
            if v.iter().any(|x| !x.is_finite()) {
                return Ok(true);
            }
        }
        Ok(self
            .buffers
            .iter()
            .any(|b| b.get().iter().any(|x| !x.is_finite())))
    }
}

/// How BatchNorm layers normalize in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BnMode {
    /// Running (source) statistics; nothing is updated. Source model / evaluation.
    Eval,
    /// Batch statistics, and the running statistics are updated (momentum 0.1). Training.
    Train,
    /// Batch statistics, running statistics untouched. Test-time normalization, TENT.
    Batch,
    /// `(1−α)·running + α·batch`, running statistics untouched (α-BN).
    Alpha(f32),
}

impl BnMode {
    /// Weight of the batch's own statistics in the normalization (0 in eval mode).
    pub fn batch_weight(self) -> f32 {
        match self {
            BnMode::Eval => 0.0,
            BnMode::Train | BnMode::Batch => 1.0,
            BnMode::Alpha(a) => a,
        }
    }
}

pub struct Conv2d {
    weight: Param,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn new(
        vs: &mut VarSource,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = vs.param(
            &format!("{name}.weight"),
            &[cout, cin, k, k],
            ParamKind::ConvWeight,
            Init::KaimingNormal { fan: cout * k * k },
        )?;
        Ok(Self {
            weight,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::conv2d(x, &self.weight.t(), self.stride, self.padding)?)
    }

    pub fn weight(&self) -> &Param {
        &self.weight
    }
}

pub struct BatchNorm {
    weight: Param,
    bias: Param,
    running_mean: Buffer,
    running_var: Buffer,
    eps: f64,
    momentum: f32,
    /// Statistics of the last batch normalized with batch statistics (for diagnostics/tests).
    last_batch: Arc<Mutex<Option<BnStats>>>,
    /// UnMix-TNS components; when set they replace the normalization in every mode.
    unmix: Arc<Mutex<Option<UnmixState>>>,
}

/// UnMix-TNS (Tomar et al., ICLR 2024) state of one BatchNorm layer: K components of
/// per-channel (mean, variance), mixed per instance and updated online.
#[derive(Clone, Debug, PartialEq)]
pub struct UnmixState {
    pub k: usize,
    /// K × C component means, row-major.
    pub means: Vec<f32>,
    /// K × C component variances.
    pub vars: Vec<f32>,
    /// Update rate of the components.
    pub momentum: f32,
    /// Whether a forward pass updates the components (off for predictions without adapting).
    pub update: bool,
}

impl UnmixState {
    /// Normalize `x` (N, C, H, W) with per-instance mixtures of the components, then apply the
    /// affine `w`, `b`; update the components from the instance statistics when `update`.
    ///
    /// Per instance i: its channel mean m_i and biased variance v_i (over H·W, differentiable);
    /// soft assignment p_ik = softmax_k(cos(m_i, μ_k)/0.07) (no gradient); mixed statistics
    /// μ̃_i = mean_k[(1−p_ik)μ_k + p_ik m_i] and σ̃²_i = mean_k[(1−p_ik)σ²_k + p_ik v_i] plus
    /// mean_k[((1−p_ik)μ_k + p_ik m_i)²] − μ̃_i²; then μ_k += M·mean_i p_ik (m_i − μ_k), the
    /// same for σ²_k with v_i, with the statistics from before the update used to normalize.
    pub fn forward(&mut self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let (n, c, h, wd) = x.dims4()?;
        let k = self.k;
        let dev = x.device();
        let xf = x.reshape((n, c, h * wd))?;
        let m = xf.mean_keepdim(2)?; // (n, c, 1)
        let v = xf.broadcast_sub(&m)?.sqr()?.mean_keepdim(2)?;
        let m = m.reshape((n, 1, c))?;
        let v = v.reshape((n, 1, c))?;
        let mh = m.flatten_all()?.to_vec1::<f32>()?;
        let vh = v.flatten_all()?.to_vec1::<f32>()?;
        let unit = |r: &[f32]| -> Vec<f64> {
            let nr = r
                .iter()
                .map(|a| (*a as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            r.iter().map(|a| *a as f64 / nr).collect()
        };
        let mu_unit: Vec<Vec<f64>> = (0..k)
            .map(|j| unit(&self.means[j * c..(j + 1) * c]))
            .collect();
        let mut probs = vec![0f32; n * k];
        for i in 0..n {
            let mi = unit(&mh[i * c..(i + 1) * c]);
            let sims: Vec<f64> = mu_unit
                .iter()
                .map(|u| u.iter().zip(&mi).map(|(a, b)| a * b).sum::<f64>() / 0.07)
                .collect();
            let mx = sims.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sims.iter().map(|s| (s - mx).exp()).sum();
            for j in 0..k {
                probs[i * k + j] = ((sims[j] - mx).exp() / z) as f32;
            }
        }
        let p = Tensor::from_vec(probs.clone(), (n, k, 1), dev)?;
        let q = p.affine(-1.0, 1.0)?;
        let mu = Tensor::from_vec(self.means.clone(), (1, k, c), dev)?;
        let sig = Tensor::from_vec(self.vars.clone(), (1, k, c), dev)?;
        let mean_mat = (q.broadcast_mul(&mu)? + p.broadcast_mul(&m)?)?;
        let var_mat = (q.broadcast_mul(&sig)? + p.broadcast_mul(&v)?)?;
        let mean = mean_mat.mean(1)?; // (n, c)
        let var = ((var_mat.mean(1)? + mean_mat.sqr()?.mean(1)?)? - mean.sqr()?)?;
        let inv = (var + eps)?.sqrt()?.recip()?.reshape((n, c, 1, 1))?;
        let y = x
            .broadcast_sub(&mean.reshape((n, c, 1, 1))?)?
            .broadcast_mul(&inv)?
            .broadcast_mul(&w.reshape((1, c, 1, 1))?)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?)?;
        if self.update {
            let mom = self.momentum;
            for j in 0..k {
                for ch in 0..c {
                    let (mut dm, mut dv) = (0f32, 0f32);
                    for i in 0..n {
                        let pij = probs[i * k + j];
                        dm += pij * (mh[i * c + ch] - self.means[j * c + ch]);
                        dv += pij * (vh[i * c + ch] - self.vars[j * c + ch]);
                    }
                    self.means[j * c + ch] += mom * dm / n as f32;
                    self.vars[j * c + ch] += mom * dv / n as f32;
                }
            }
        }
        Ok(y)
    }
}

impl BatchNorm {
    pub fn new(vs: &mut VarSource, name: &str, c: usize) -> Result<Self> {
        Ok(Self {
            weight: vs.param(
                &format!("{name}.weight"),
                &[c],
                ParamKind::NormWeight,
                Init::Const(1.0),
            )?,
            bias: vs.param(
                &format!("{name}.bias"),
                &[c],
                ParamKind::NormBias,
                Init::Const(0.0),
            )?,
            running_mean: vs.buffer(&format!("{name}.running_mean"), c, 0.0)?,
            running_var: vs.buffer(&format!("{name}.running_var"), c, 1.0)?,
            eps: 1e-5,
            momentum: 0.1,
            last_batch: Arc::new(Mutex::new(None)),
            unmix: Arc::new(Mutex::new(None)),
        })
    }

    /// Install (Some) or remove (None) UnMix-TNS components on this layer.
    pub fn set_unmix(&self, state: Option<UnmixState>) {
        *self.unmix.lock().expect("unmix lock poisoned") = state;
    }

    pub fn unmix(&self) -> Option<UnmixState> {
        self.unmix.lock().expect("unmix lock poisoned").clone()
    }

    /// Switch the component updates of an installed UnMix-TNS layer on or off.
    pub fn set_unmix_update(&self, on: bool) {
        if let Some(s) = self.unmix.lock().expect("unmix lock poisoned").as_mut() {
            s.update = on;
        }
    }

    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let (w, b) = (self.weight.t(), self.bias.t());
        if let Some(s) = self.unmix.lock().expect("unmix lock poisoned").as_mut() {
            return s.forward(x, &w, &b, self.eps);
        }
        let (rm, rv) = (self.running_mean.get(), self.running_var.get());
        let y = match mode {
            BnMode::Eval => ops::batch_norm(x, &w, &b, (&rm, &rv), None, 0.0, self.eps)?,
            BnMode::Train | BnMode::Batch | BnMode::Alpha(_) => {
                let stats = BnStats::of(x)?;
                let y = ops::batch_norm(
                    x,
                    &w,
                    &b,
                    (&rm, &rv),
                    Some(&stats),
                    mode.batch_weight(),
                    self.eps,
                )?;
                self.record(stats, mode, &rm, &rv);
                y
            }
        };
        Ok(y)
    }

    /// `conv`, then this BatchNorm, then ReLU if `relu`, then a `pool`×`pool` max-pool if
    /// `pool` > 1, as one fused op (see `ops::fused`): the same values and gradients as
    /// `max_pool2d(forward(&conv.forward(x)?, mode)?.relu()?, pool)`, and the same
    /// running-statistic updates, with far fewer passes over the activations.
    pub fn forward_conv(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        mode: BnMode,
        relu: bool,
        pool: usize,
    ) -> Result<Tensor> {
        self.fused(conv, x, None, mode, relu, pool)
    }

    /// `max(0, self(conv(x)) + residual)` as one op (`ops::conv_bn_residual`): the end of a
    /// ResNet basic block.
    pub fn forward_conv_add_relu(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        residual: &Tensor,
        mode: BnMode,
    ) -> Result<Tensor> {
        self.fused(conv, x, Some(residual), mode, true, 1)
    }

    fn fused(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        residual: Option<&Tensor>,
        mode: BnMode,
        relu: bool,
        pool: usize,
    ) -> Result<Tensor> {
        if self.unmix.lock().expect("unmix lock poisoned").is_some() {
            // UnMix-TNS normalizes per instance: the unfused path.
            let h = self.forward(&conv.forward(x)?, mode)?;
            let h = match residual {
                Some(r) => (h + r)?,
                None => h,
            };
            let h = if relu { h.relu()? } else { h };
            return Ok(if pool > 1 {
                ops::max_pool2d(&h, pool)?
            } else {
                h
            });
        }
        let (rm, rv) = (self.running_mean.get(), self.running_var.get());
        let cfg = ops::ConvBnCfg {
            stride: conv.stride,
            padding: conv.padding,
            eps: self.eps,
            relu,
            pool,
        };
        let (w, g, b) = (conv.weight.t(), self.weight.t(), self.bias.t());
        let batch = (mode != BnMode::Eval).then(|| mode.batch_weight());
        let (y, stats) = match residual {
            Some(r) => ops::conv_bn_residual(x, &w, &g, &b, r, (&rm, &rv), batch, cfg)?,
            None => ops::conv_bn(x, &w, &g, &b, (&rm, &rv), batch, cfg)?,
        };
        if let Some(stats) = stats {
            self.record(stats, mode, &rm, &rv);
        }
        Ok(y)
    }

    fn has_unmix(&self) -> bool {
        self.unmix.lock().expect("unmix lock poisoned").is_some()
    }

    /// Remember a batch's statistics; in train mode, move the running statistics toward them
    /// (momentum, unbiased variance, as PyTorch).
    fn record(&self, stats: BnStats, mode: BnMode, rm: &[f32], rv: &[f32]) {
        if mode == BnMode::Train {
            let m = self.momentum;
            let unbias = if stats.count > 1 {
                stats.count as f32 / (stats.count - 1) as f32
            } else {
                1.0
            };
            self.running_mean.set(
                rm.iter()
                    .zip(&stats.mean)
                    .map(|(r, b)| (1.0 - m) * r + m * b)
                    .collect(),
            );
            self.running_var.set(
                rv.iter()
                    .zip(&stats.var)
                    .map(|(r, b)| (1.0 - m) * r + m * b * unbias)
                    .collect(),
            );
        }
        *self.last_batch.lock().expect("bn lock poisoned") = Some(stats);
    }

    pub fn running_stats(&self) -> (Vec<f32>, Vec<f32>) {
        (self.running_mean.get(), self.running_var.get())
    }

    /// Statistics of the last batch this layer normalized with batch statistics.
    pub fn last_batch_stats(&self) -> Option<BnStats> {
        self.last_batch.lock().expect("bn lock poisoned").clone()
    }

    pub fn set_running_stats(&self, mean: Vec<f32>, var: Vec<f32>) {
        self.running_mean.set(mean);
        self.running_var.set(var);
    }

    pub fn affine(&self) -> (&Param, &Param) {
        (&self.weight, &self.bias)
    }
}

pub struct Linear {
    weight: Param,
    bias: Param,
}

impl Linear {
    pub fn new(vs: &mut VarSource, name: &str, din: usize, dout: usize) -> Result<Self> {
        Ok(Self {
            weight: vs.param(
                &format!("{name}.weight"),
                &[dout, din],
                ParamKind::LinearWeight,
                Init::Uniform { fan_in: din },
            )?,
            bias: vs.param(
                &format!("{name}.bias"),
                &[dout],
                ParamKind::LinearBias,
                Init::Uniform { fan_in: din },
            )?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t().t()?)?
            .broadcast_add(&self.bias.t())?)
    }
}

/// One layer of [`conv_bn_chain`]: `bn(conv(act[input])) (+ act[residual]) (→ ReLU) (→ pool×pool
/// max-pool)`. Activation 0 is the chain's input, activation `i + 1` the output of layer `i`.
pub struct ChainLayer<'a> {
    pub conv: &'a Conv2d,
    pub bn: &'a BatchNorm,
    pub input: usize,
    pub residual: Option<usize>,
    pub relu: bool,
    pub pool: usize,
}

/// Runs a chain of conv-BN layers and returns the last one's output: on the CPU as one op
/// (`ops::conv_bn_net`: no candle op, and no gradient hand-off through candle's autograd,
/// between the layers), layer by layer with [`BatchNorm::forward_conv`] when a layer carries
/// UnMix-TNS components. Values, gradients and running-statistic updates are the same either
/// way.
pub fn conv_bn_chain(x: &Tensor, layers: &[ChainLayer], mode: BnMode) -> Result<Tensor> {
    if layers.iter().any(|l| l.bn.has_unmix()) {
        let mut acts = vec![x.clone()];
        for l in layers {
            let r = l.residual.map(|r| acts[r].clone());
            let y =
                l.bn.fused(l.conv, &acts[l.input], r.as_ref(), mode, l.relu, l.pool)?;
            acts.push(y);
        }
        return Ok(acts.pop().expect("the input is there"));
    }
    let batch = (mode != BnMode::Eval).then(|| mode.batch_weight());
    let net: Vec<ops::NetLayer> = layers
        .iter()
        .map(|l| ops::NetLayer {
            input: l.input,
            residual: l.residual,
            w: l.conv.weight.t(),
            gamma: l.bn.weight.t(),
            beta: l.bn.bias.t(),
            fixed: (l.bn.running_mean.get(), l.bn.running_var.get()),
            batch,
            cfg: ops::ConvBnCfg {
                stride: l.conv.stride,
                padding: l.conv.padding,
                eps: l.bn.eps,
                relu: l.relu,
                pool: l.pool,
            },
        })
        .collect();
    let (y, stats) = ops::conv_bn_net(x, &net)?;
    for ((l, nl), s) in layers.iter().zip(&net).zip(stats) {
        if let Some(s) = s {
            l.bn.record(s, mode, &nl.fixed.0, &nl.fixed.1);
        }
    }
    Ok(y)
}
