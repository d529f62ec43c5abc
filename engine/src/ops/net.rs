//! A chain of conv → BN (→ + residual) (→ ReLU) (→ max-pool) layers as one candle op: the body
//! of the CNN and of the ResNet, from the images to the last feature map.
//!
//! Run layer by layer as separate candle ops (see [`super::fused`]), every activation crosses
//! candle's autograd twice more than its own kernels need: each gradient handed from one op to
//! the next is added by `Tensor::backward` into a zero tensor it allocates for the purpose (a
//! zero-fill, a third buffer and a pass over three tensors, on one core), and every activation
//! is a tensor that lives as long as the graph. Here the layers' forward and backward passes
//! (the same [`Layer`] functions as the per-layer op) run back to back on plain buffers:
//!
//! - forward: layer `i` reads activation `input` (0 = the op's input, `j + 1` = layer `j`'s
//!   output) and, with a residual connection, adds activation `residual` before its ReLU;
//!   activations that the backward pass does not read are freed after their last use. With a
//!   backward pass to follow, a plain layer (no residual, pooling or recomputation) whose
//!   output only one layer reads, as its input, is never written out: the reader normalizes
//!   that layer's stored convolution image by image into a buffer that stays in cache (a
//!   ResNet block's first half; not where the reader's weight needs a gradient, which reads
//!   the input again). A residual layer's output (a block's end), which several layers and the
//!   backward pass read, is computed the same way by its first reader when that reads it as its
//!   input, and written out from that buffer as it goes: no separate pass over the batch and
//!   no read of it back from memory for that convolution.
//! - backward: in reverse order; the gradient of an activation read by several layers (a ResNet
//!   block's input: its first convolution and its shortcut, or its residual path) is the sum of
//!   theirs, each image's share added in place, while in cache, into what arrived first. The
//!   last layer to complete an activation's gradient also runs, image by image while that
//!   gradient is in cache, the first backward pass of the activation's producer (its per-channel
//!   Σg and Σg·(z − m), and with a residual the ReLU mask applied in place), which the producer
//!   would otherwise run as a pass of its own over the whole gradient.
//!
//! The op's inputs are the images and one tensor that concatenates the parameters a gradient
//! is wanted for (candle's `cat` hands each of them its slice back); the frozen ones are read
//! from the op's own copy. The values and gradients are those of the per-layer ops (tested
//! against them, bit for bit where the same kernels run).

use super::batchnorm::BnStats;
use super::conv::Geometry;
use super::fused::{
    composed, scale_shift, ConvBnCfg, DxOut, Grads, ImageHook, Input, Layer, Materialize, Pass1,
    Pass1Ctx, Saved, Tracked,
};
use super::{f32_slice, uninit_f32, with_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// One layer of a chain: `act[input] → conv(w) → BN(γ, β) (+ act[residual]) (→ ReLU) (→ pool)`.
/// Activation 0 is the chain's input, activation `i + 1` the output of layer `i`.
pub struct NetLayer {
    pub input: usize,
    pub residual: Option<usize>,
    /// (O, C, KH, KW).
    pub w: Tensor,
    pub gamma: Tensor,
    pub beta: Tensor,
    /// Running (source) mean and variance.
    pub fixed: (Vec<f32>, Vec<f32>),
    /// `Some(α)`: the batch's statistics mixed in with weight α; `None`: fixed statistics only.
    pub batch: Option<f32>,
    pub cfg: ConvBnCfg,
}

/// Which parameter of a layer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Which {
    W,
    Gamma,
    Beta,
}

struct NetSaved {
    /// Activations 1..=n (index a − 1); empty where the backward does not read them. The last
    /// one is the op's output, handed back by candle in the backward pass.
    acts: Vec<Vec<f32>>,
    /// Shapes of activations 0..=n.
    dims: Vec<[usize; 4]>,
    saved: Vec<Saved>,
}

struct NetOp {
    layers: Vec<Layer>,
    wiring: Vec<(usize, Option<usize>)>,
    /// Per layer: W, γ, β (copies of the values).
    params: Vec<[Vec<f32>; 3]>,
    /// The parameters in the anchor tensor, in its order.
    tracked: Vec<(usize, Which)>,
    /// Per activation: whether it depends on a tracked input or parameter.
    act_tracked: Vec<bool>,
    /// A backward pass will follow: keep what it reads.
    keep: bool,
    saved: Arc<Mutex<Option<NetSaved>>>,
    stats: Arc<Mutex<Vec<Option<BnStats>>>>,
}

impl NetOp {
    fn act<'a>(&self, a: usize, x: &'a [f32], acts: &'a [Vec<f32>]) -> &'a [f32] {
        if a == 0 {
            x
        } else {
            &acts[a - 1]
        }
    }

    /// Per activation a: the layer whose backward runs the first backward pass of a's producer
    /// (layer a − 1) image by image, if any: the layer with the lowest index among those that
    /// read a (the last, in backward order, to send a its gradient), provided it reads a as its
    /// input and computes its gradient, and the producer stores its convolution output (a
    /// recomputing layer does not).
    fn pass1_fusers(&self) -> Vec<Option<usize>> {
        let n = self.layers.len();
        let mut fuser = vec![None; n + 1];
        for (a, slot) in fuser.iter_mut().enumerate().take(n).skip(1) {
            let first = (0..n).find(|&i| {
                let (input, residual) = self.wiring[i];
                input == a || residual == Some(a)
            });
            if let Some(i) = first {
                let producer = &self.layers[a - 1];
                if self.wiring[i].0 == a && self.act_tracked[a] && !producer.recompute {
                    *slot = Some(i);
                }
            }
        }
        fuser
    }

    fn tracked(&self, i: usize) -> Tracked {
        let (input, residual) = self.wiring[i];
        Tracked {
            x: self.act_tracked[input],
            w: self.tracked.contains(&(i, Which::W)),
            r: residual.is_some_and(|r| self.act_tracked[r]),
        }
    }

    /// Whether the backward pass reads activation `a` (a ≥ 1): the input of a layer whose
    /// weight gradient is wanted, or the output of the chain. (A residual layer's backward
    /// reads the ReLU mask of its output, which its forward keeps as bits.)
    fn backward_reads(&self, a: usize) -> bool {
        let n = self.layers.len();
        a == n || (0..n).any(|i| self.wiring[i].0 == a && self.tracked(i).w)
    }
}

impl CustomOp2 for NetOp {
    fn name(&self) -> &'static str {
        "attune-conv-bn-net"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1)?;
        let n = self.layers.len();
        let in_dims: [usize; 4] = l1.dims().try_into().map_err(|_| {
            candle_core::Error::Msg(format!("conv_bn_net: input of shape {:?}", l1.dims()))
        })?;
        // The last layer that reads each activation.
        let mut last_use = vec![0usize; n + 1];
        for (i, &(input, residual)) in self.wiring.iter().enumerate() {
            last_use[input] = i;
            if let Some(r) = residual {
                last_use[r] = i;
            }
        }
        // A deferring residual layer's residual is read by the layer that computes its output.
        for (j, layer) in self.layers.iter().enumerate() {
            if let (true, Some(r)) = (layer.defer, self.wiring[j].1) {
                if let Some(i) = (j + 1..n).find(|&i| self.wiring[i].0 == j + 1) {
                    last_use[r] = last_use[r].max(i);
                }
            }
        }
        let keep = self.keep;
        let mut acts: Vec<Vec<f32>> = Vec::with_capacity(n);
        let mut dims = vec![in_dims];
        let mut saved: Vec<Saved> = Vec::with_capacity(n);
        let mut stats = Vec::with_capacity(n);
        // Per layer that defers its epilogue: its scale and shift.
        let mut epilogues: Vec<(Vec<f32>, Vec<f32>)> = Vec::with_capacity(n);
        for (i, layer) in self.layers.iter().enumerate() {
            let (input, residual) = self.wiring[i];
            let g = layer.geometry(&dims[input])?;
            let r = residual.map(|r| self.act(r, x, &acts));
            let [w, gamma, beta] = &self.params[i];
            let (y, mut s) = match input {
                // The producer deferred its epilogue to this layer, its first reader.
                a if a > 0 && self.layers[a - 1].defer && acts[a - 1].is_empty() => {
                    let p = a - 1;
                    let (scale, shift) = &epilogues[p];
                    let Saved { z, mask, .. } = &mut saved[p];
                    let xi = Input::Virtual {
                        z,
                        scale,
                        shift,
                        relu: self.layers[p].relu,
                        r: self.wiring[p].1.map(|r| self.act(r, x, &acts)),
                    };
                    if self.layers[p].residual {
                        // Other layers read it too: written out as it is computed, with its
                        // ReLU mask for the backward pass.
                        // SAFETY: the forward writes every image of it.
                        let mut m = unsafe { uninit_f32(g.b * g.in_len()) };
                        let to = Materialize {
                            x: &mut m,
                            mask: (!mask.is_empty()).then_some(&mut mask[..]),
                        };
                        let out = layer.forward(&g, xi, w, gamma, beta, r, Some(to))?;
                        acts[p] = m;
                        out
                    } else {
                        layer.forward(&g, xi, w, gamma, beta, r, None)?
                    }
                }
                a => {
                    let xi = Input::Plain(self.act(a, x, &acts));
                    layer.forward(&g, xi, w, gamma, beta, r, None)?
                }
            };
            stats.push(s.stats.take());
            epilogues.push(match layer.defer {
                true => scale_shift(&s.nm, gamma, beta),
                false => (vec![], vec![]),
            });
            saved.push(s);
            dims.push(layer.out_dims(&g));
            acts.push(y);
            // Free what nothing reads any more.
            for a in 1..=i {
                if last_use[a] == i && !(keep && self.backward_reads(a)) {
                    acts[a - 1] = Vec::new();
                }
            }
        }
        let out = acts.pop().unwrap_or_else(|| x.to_vec());
        let shape = Shape::from(dims[n].to_vec());
        *self.stats.lock().expect("conv_bn_net lock") = stats;
        if keep {
            *self.saved.lock().expect("conv_bn_net lock") = Some(NetSaved { acts, dims, saved });
        }
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        anchor: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().expect("conv_bn_net lock");
        let Some(ns) = guard.as_ref() else {
            candle_core::bail!("conv_bn_net: backward through a forward that kept no state");
        };
        let n = self.layers.len();
        let geoms: Vec<Geometry> = (0..n)
            .map(|i| self.layers[i].geometry(&ns.dims[self.wiring[i].0]))
            .collect::<Result<_>>()?;
        let mut dparams: Vec<Option<Vec<f32>>> = vec![None; 3 * n];
        // The layer whose backward runs the first pass of each activation's producer: the last
        // one (in backward order) to send that activation a gradient, when it reads it as its
        // input (its input gradient is then complete image by image).
        let fuser = self.pass1_fusers();
        let dx = with_f32(x, |xv| {
            with_f32(dy, |dyv| {
                // Gradients of activations 0..=n (the output's is candle's dy), and the
                // first-pass sums of layers whose first pass already ran.
                let mut grads: Vec<Option<Vec<f32>>> = vec![None; n + 1];
                let mut pass1: Vec<Option<Vec<(f64, f64)>>> = vec![None; n];
                for i in (0..n).rev() {
                    if !self.act_tracked[i + 1] {
                        // Nothing upstream of this layer's output needs a gradient.
                        continue;
                    }
                    let layer = &self.layers[i];
                    let (input, residual) = self.wiring[i];
                    let mine = grads[i + 1].take();
                    let d: &[f32] = match (&mine, i + 1 == n) {
                        (_, true) => dyv,
                        (Some(d), false) => d,
                        // Nothing downstream reads this layer's output.
                        (None, false) => continue,
                    };
                    let [w, gamma, beta] = &self.params[i];
                    let xi = self.act(input, xv, &ns.acts);
                    let tr = self.tracked(i);
                    let p1 = match pass1[i].take() {
                        Some(sums) => Pass1::Done(sums),
                        None => Pass1::Here,
                    };
                    let masked_here = matches!(p1, Pass1::Done(_)) && layer.residual;
                    // The producer's first pass, image by image, on this input gradient.
                    let producer = (fuser[input] == Some(i)).then(|| {
                        let p = input - 1;
                        let [_, pg, pb] = &self.params[p];
                        let ctx = Pass1Ctx::new(&self.layers[p], &geoms[p], &ns.saved[p], pg, pb);
                        (p, ctx, vec![(0f64, 0f64); geoms[p].b * geoms[p].o])
                    });
                    let mut acc = grads[input].take();
                    let dx_out = match acc.as_mut() {
                        Some(a) => DxOut::Add(a),
                        None => DxOut::New,
                    };
                    let (p, ctx, mut slots) = match producer {
                        Some((p, ctx, slots)) => (Some(p), Some(ctx), slots),
                        None => (None, None, vec![]),
                    };
                    let hook = |b: usize, dxb: &mut [f32], slot: &mut [(f64, f64)]| {
                        if let Some(ctx) = &ctx {
                            ctx.image(b, dxb, slot);
                        }
                    };
                    let h: ImageHook = &hook;
                    let hook_arg = p.map(|_| (h, &mut slots[..]));
                    let grads_i = layer.backward(
                        &geoms[i],
                        &ns.saved[i],
                        xi,
                        w,
                        gamma,
                        beta,
                        d,
                        tr,
                        p1,
                        dx_out,
                        hook_arg,
                    )?;
                    if let Some(p) = p {
                        pass1[p] = Some(slots);
                    }
                    let Grads { dx, dw, dgb, dr } = grads_i;
                    let o = geoms[i].o;
                    dparams[3 * i] = dw;
                    dparams[3 * i + 1] = Some(dgb[..o].to_vec());
                    dparams[3 * i + 2] = Some(dgb[o..].to_vec());
                    grads[input] = acc.or(dx);
                    // With the first pass done by the consumer, this layer's own gradient
                    // buffer holds g = dy·[y > 0]: the residual's gradient.
                    let dr = match masked_here {
                        true => mine.filter(|_| tr.r),
                        false => dr,
                    };
                    if let (Some(r), Some(dr)) = (residual, dr) {
                        match &mut grads[r] {
                            Some(acc) => add_assign(acc, &dr),
                            slot => *slot = Some(dr),
                        }
                    }
                }
                Ok(grads[0].take())
            })
        })?;
        let dx = match dx {
            Some(v) if self.act_tracked[0] => Some(Tensor::from_vec(v, x.shape(), x.device())?),
            _ => None,
        };
        if self.tracked.is_empty() {
            return Ok((dx, None));
        }
        let mut flat = Vec::with_capacity(anchor.elem_count());
        for &(i, which) in &self.tracked {
            let k = 3 * i
                + match which {
                    Which::W => 0,
                    Which::Gamma => 1,
                    Which::Beta => 2,
                };
            let len = self.params[i][k - 3 * i].len();
            match &dparams[k] {
                Some(v) => flat.extend_from_slice(v),
                None => flat.extend(std::iter::repeat_n(0f32, len)),
            }
        }
        Ok((
            dx,
            Some(Tensor::from_vec(flat, anchor.shape(), anchor.device())?),
        ))
    }
}

/// `acc += v`, element-wise, in parallel.
fn add_assign(acc: &mut [f32], v: &[f32]) {
    use rayon::prelude::*;
    acc.par_chunks_mut(1 << 14)
        .zip(v.par_chunks(1 << 14))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// Runs `layers` on `x` (N, C, H, W) in order and returns the last layer's output and each
/// layer's batch statistics (`Some` where it normalized with them, for running-statistic
/// updates). Gradients flow to `x` and to every parameter as far as the graph tracks them.
/// Off the CPU, or in another dtype than f32, the layers run one by one through candle's own
/// ops.
pub fn conv_bn_net(x: &Tensor, layers: &[NetLayer]) -> Result<(Tensor, Vec<Option<BnStats>>)> {
    for (i, l) in layers.iter().enumerate() {
        if l.input > i || l.residual.is_some_and(|r| r > i) {
            candle_core::bail!("conv_bn_net: layer {i} reads an activation that comes later");
        }
        if l.residual.is_some() && l.cfg.pool > 1 {
            candle_core::bail!("conv_bn_net: no pooling after a residual connection");
        }
    }
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32) {
        let mut acts = vec![x.clone()];
        let mut stats = vec![];
        for l in layers {
            let r = l.residual.map(|r| &acts[r]);
            let fixed = (&l.fixed.0[..], &l.fixed.1[..]);
            let (y, s) = composed(
                &acts[l.input],
                &l.w,
                &l.gamma,
                &l.beta,
                r,
                fixed,
                l.batch,
                l.cfg,
            )?;
            acts.push(y);
            stats.push(s);
        }
        let out = acts.pop().expect("the input is there");
        return Ok((out, stats));
    }
    let mut tracked = vec![];
    let mut anchor_parts = vec![];
    let mut act_tracked = vec![x.track_op()];
    let mut params = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let mut any = act_tracked[l.input] || l.residual.is_some_and(|r| act_tracked[r]);
        for (which, t) in [
            (Which::W, &l.w),
            (Which::Gamma, &l.gamma),
            (Which::Beta, &l.beta),
        ] {
            if t.track_op() {
                tracked.push((i, which));
                anchor_parts.push(t.flatten_all()?);
                any = true;
            }
        }
        act_tracked.push(any);
        params.push([
            l.w.flatten_all()?.to_vec1::<f32>()?,
            l.gamma.to_vec1::<f32>()?,
            l.beta.to_vec1::<f32>()?,
        ]);
    }
    let keep = act_tracked.iter().any(|t| *t);
    let built = layers
        .iter()
        .map(|l| {
            let fixed = (&l.fixed.0[..], &l.fixed.1[..]);
            let x_tracked = act_tracked[l.input];
            Layer::new(
                &l.w,
                l.residual.is_some(),
                fixed,
                l.batch,
                l.cfg,
                keep,
                x_tracked,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut built = built;
    if keep {
        for a in 1..layers.len() {
            let (p, l) = (&layers[a - 1], &built[a - 1]);
            let readers: Vec<usize> = (0..layers.len())
                .filter(|&i| layers[i].input == a || layers[i].residual == Some(a))
                .collect();
            let only_input = match readers[..] {
                [i] => layers[i].input == a && !layers[i].w.track_op() && !built[i].recompute,
                _ => false,
            };
            // A residual layer's output is written out by its first reader, as it computes it.
            let first_input = match readers.first() {
                Some(&i) => layers[i].input == a && !built[i].recompute,
                None => false,
            };
            let plain = only_input && p.residual.is_none();
            let residual = first_input && p.residual.is_some();
            built[a - 1].defer = (plain || residual) && p.cfg.pool <= 1 && !l.recompute;
        }
    }
    let stats = Arc::new(Mutex::new(vec![]));
    let op = NetOp {
        layers: built,
        wiring: layers.iter().map(|l| (l.input, l.residual)).collect(),
        params,
        tracked,
        act_tracked,
        keep,
        saved: Arc::new(Mutex::new(None)),
        stats: stats.clone(),
    };
    let x = x.contiguous()?;
    let y = if !keep {
        let anchor = Tensor::zeros(1, x.dtype(), x.device())?;
        x.apply_op2_no_bwd(&anchor, &op)?
    } else if anchor_parts.is_empty() {
        // Only the input is tracked: a constant anchor that gets no gradient.
        let anchor = Tensor::zeros(1, x.dtype(), x.device())?;
        x.apply_op2(&anchor, op)?
    } else {
        let anchor = Tensor::cat(&anchor_parts, 0)?;
        x.apply_op2(&anchor, op)?
    };
    let stats = std::mem::take(&mut *stats.lock().expect("conv_bn_net lock"));
    Ok((y, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::randn;
    use crate::ops::{conv_bn, conv_bn_residual};
    use candle_core::{Device, Var};

    /// A chain's parameters as variables, and which of them a test tracks.
    struct Params {
        w: Var,
        gamma: Var,
        beta: Var,
        fixed: (Vec<f32>, Vec<f32>),
    }

    /// (input, residual, cin, cout, kernel, stride, relu, pool) per layer.
    type Spec = (
        usize,
        Option<usize>,
        usize,
        usize,
        usize,
        usize,
        bool,
        usize,
    );

    /// A small ResNet: a stem, a block with an identity shortcut, a block with a strided
    /// projection shortcut (1×1, stride 2) whose second convolution has 32 channels (the
    /// Winograd path on CPUs with AVX-512, at 8 × 8 from 16 × 16 inputs, from a batch of 8).
    /// Activations: 1 stem, 2 h, 3 block end, 4 h', 5 shortcut, 6 block end.
    const RESNET: [Spec; 6] = [
        (0, None, 2, 8, 3, 1, true, 1),
        (1, None, 8, 8, 3, 1, true, 1),
        (2, Some(1), 8, 8, 3, 1, true, 1),
        (3, None, 8, 32, 3, 2, true, 1),
        (3, None, 8, 32, 1, 2, false, 1),
        (4, Some(5), 32, 32, 3, 1, true, 1),
    ];

    /// A small CNN: conv-BN-ReLU-pool twice, then conv-BN-ReLU.
    const CNN: [Spec; 3] = [
        (0, None, 1, 8, 3, 1, true, 2),
        (1, None, 8, 16, 3, 1, true, 2),
        (2, None, 16, 16, 3, 1, true, 1),
    ];

    fn params(spec: &[Spec], seed: u64) -> Vec<Params> {
        spec.iter()
            .enumerate()
            .map(|(i, &(_, _, cin, cout, k, ..))| {
                let s = seed + 10 * i as u64;
                let w = randn(&[cout, cin, k, k], s)
                    .affine((2.0 / (cin * k * k) as f64).sqrt(), 0.0)
                    .unwrap();
                let gamma = randn(&[cout], s + 1).affine(0.1, 1.0).unwrap();
                let beta = randn(&[cout], s + 2).affine(0.1, 0.0).unwrap();
                let fm = randn(&[cout], s + 3).affine(0.1, 0.0).unwrap();
                let fv = randn(&[cout], s + 4)
                    .abs()
                    .unwrap()
                    .affine(0.5, 0.5)
                    .unwrap();
                Params {
                    w: Var::from_tensor(&w).unwrap(),
                    gamma: Var::from_tensor(&gamma).unwrap(),
                    beta: Var::from_tensor(&beta).unwrap(),
                    fixed: (fm.to_vec1().unwrap(), fv.to_vec1().unwrap()),
                }
            })
            .collect()
    }

    /// The tensor of a parameter: tracked (the variable) or detached.
    fn t(v: &Var, tracked: bool) -> Tensor {
        if tracked {
            v.as_tensor().clone()
        } else {
            v.as_tensor().detach()
        }
    }

    fn cfg(s: &Spec) -> ConvBnCfg {
        ConvBnCfg {
            stride: s.5,
            padding: s.4 / 2,
            eps: 1e-5,
            relu: s.6,
            pool: s.7,
        }
    }

    /// The chain through `conv_bn_net`, and layer by layer through the per-layer ops.
    fn both(
        spec: &[Spec],
        ps: &[Params],
        x: &Tensor,
        batch: Option<f32>,
        track: (bool, bool),
    ) -> [(Tensor, Vec<Option<BnStats>>); 2] {
        let (track_w, track_gb) = track;
        let layers: Vec<NetLayer> = spec
            .iter()
            .zip(ps)
            .map(|(s, p)| NetLayer {
                input: s.0,
                residual: s.1,
                w: t(&p.w, track_w),
                gamma: t(&p.gamma, track_gb),
                beta: t(&p.beta, track_gb),
                fixed: p.fixed.clone(),
                batch,
                cfg: cfg(s),
            })
            .collect();
        let fused = conv_bn_net(x, &layers).unwrap();
        let mut acts = vec![x.clone()];
        let mut stats = vec![];
        for l in &layers {
            let fixed = (&l.fixed.0[..], &l.fixed.1[..]);
            let (y, s) = match l.residual {
                Some(r) => {
                    let r = acts[r].clone();
                    conv_bn_residual(
                        &acts[l.input],
                        &l.w,
                        &l.gamma,
                        &l.beta,
                        &r,
                        fixed,
                        batch,
                        l.cfg,
                    )
                }
                None => conv_bn(&acts[l.input], &l.w, &l.gamma, &l.beta, fixed, batch, l.cfg),
            }
            .unwrap();
            acts.push(y);
            stats.push(s);
        }
        [fused, (acts.pop().unwrap(), stats)]
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Outputs, statistics and the gradients of `Σ y·up` with respect to the input and every
    /// parameter are bit for bit those of the per-layer ops (the same kernels, and every
    /// gradient sum has at most two terms).
    fn check(spec: &[Spec], side: usize, batch: Option<f32>, track: (bool, bool), track_x: bool) {
        let dev = Device::Cpu;
        let ps = params(spec, 7);
        let xv = Var::from_tensor(&randn(&[8, spec[0].2, side, side], 1)).unwrap();
        let x = t(&xv, track_x);
        let [(y, stats), (y_ref, stats_ref)] = both(spec, &ps, &x, batch, track);
        assert_eq!(y.dims(), y_ref.dims());
        assert_eq!(values(&y), values(&y_ref), "outputs");
        assert_eq!(stats.len(), stats_ref.len());
        for (a, b) in stats.iter().zip(&stats_ref) {
            assert_eq!(
                a.as_ref().map(|s| (&s.mean, &s.var)),
                b.as_ref().map(|s| (&s.mean, &s.var))
            );
            assert_eq!(a.is_some(), batch.is_some());
        }
        if !(track.0 || track.1 || track_x) {
            return;
        }
        let up = randn(y.dims(), 99).to_device(&dev).unwrap();
        let g = (y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (y_ref * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut vars: Vec<(String, &Var, bool)> = vec![("x".into(), &xv, track_x)];
        for (i, p) in ps.iter().enumerate() {
            vars.push((format!("w{i}"), &p.w, track.0));
            vars.push((format!("gamma{i}"), &p.gamma, track.1));
            vars.push((format!("beta{i}"), &p.beta, track.1));
        }
        for (name, v, tracked) in vars {
            let (a, b) = (g.get(v.as_tensor()), g_ref.get(v.as_tensor()));
            assert_eq!(a.is_some(), tracked, "{name}: gradient present");
            assert_eq!(b.is_some(), tracked, "{name}: reference gradient present");
            if let (Some(a), Some(b)) = (a, b) {
                assert_eq!(values(a), values(b), "{name}: gradient");
                assert!(values(a).iter().any(|v| *v != 0.0), "{name}: all zero");
            }
        }
    }

    #[test]
    fn resnet_chain_matches_the_per_layer_ops_tent_like() {
        // Batch statistics, γ and β tracked: the first layer recomputes its convolution. 13 × 13
        // and 7 × 7 planes: ReLU masks whose last byte is partly used.
        check(&RESNET, 16, Some(1.0), (false, true), false);
        check(&RESNET, 13, Some(1.0), (false, true), false);
    }

    #[test]
    fn resnet_chain_matches_with_every_weight_and_the_input_tracked() {
        check(&RESNET, 16, Some(1.0), (true, true), true);
        check(&RESNET, 15, Some(0.3), (true, false), false);
        check(&RESNET, 16, None, (false, false), true);
    }

    #[test]
    fn resnet_chain_matches_without_gradients() {
        check(&RESNET, 16, None, (false, false), false);
        check(&RESNET, 16, Some(1.0), (false, false), false);
    }

    #[test]
    fn cnn_chain_with_pooling_matches() {
        check(&CNN, 12, Some(1.0), (false, true), false);
        check(&CNN, 13, Some(1.0), (true, true), true);
        check(&CNN, 12, None, (false, false), false);
    }

    #[test]
    fn layers_that_read_later_activations_are_refused() {
        let ps = params(&CNN, 1);
        let layer = |input| NetLayer {
            input,
            residual: None,
            w: ps[0].w.as_tensor().clone(),
            gamma: ps[0].gamma.as_tensor().clone(),
            beta: ps[0].beta.as_tensor().clone(),
            fixed: ps[0].fixed.clone(),
            batch: None,
            cfg: cfg(&CNN[0]),
        };
        let x = randn(&[2, 1, 8, 8], 3);
        let err = conv_bn_net(&x, &[layer(0), layer(2)])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("layer 1 reads an activation that comes later"),
            "{err}"
        );
    }
}
