//! A small BatchNorm CNN: per stage, `convs` × (3×3 conv → BN → ReLU), with a 2×2 max-pool
//! between stages; flatten → linear. With channels [32, 64, 128] on 28×28 inputs the feature
//! map goes 28 → 14 → 7 and the classifier sees 128·7·7 = 6272 features.

use crate::error::Result;
use crate::nn::{conv_bn_chain, BatchNorm, BnMode, ChainLayer, Conv2d, Linear, VarSource};
use candle_core::Tensor;

pub struct Cnn {
    blocks: Vec<(Conv2d, BatchNorm)>,
    pool_after: Vec<bool>,
    fc: Linear,
}

impl Cnn {
    pub fn new(
        vs: &mut VarSource,
        channels: &[usize],
        convs_per_stage: usize,
        in_ch: usize,
        side: usize,
        classes: usize,
    ) -> Result<Self> {
        let mut blocks = vec![];
        let mut pool_after = vec![];
        let mut cin = in_ch;
        let mut s = side;
        for (i, &c) in channels.iter().enumerate() {
            for j in 0..convs_per_stage {
                let name = format!("features.{i}.{j}");
                blocks.push((
                    Conv2d::new(vs, &format!("{name}.conv"), cin, c, 3, 1, 1)?,
                    BatchNorm::new(vs, &format!("{name}.bn"), c)?,
                ));
                pool_after.push(j + 1 == convs_per_stage && i + 1 < channels.len());
                cin = c;
            }
            if i + 1 < channels.len() {
                s /= 2;
            }
        }
        let fc = Linear::new(vs, "fc", cin * s * s, classes)?;
        Ok(Self {
            blocks,
            pool_after,
            fc,
        })
    }

    pub fn forward_features(&self, x: &Tensor, mode: BnMode) -> Result<(Tensor, Tensor)> {
        let chain: Vec<ChainLayer> = self
            .blocks
            .iter()
            .zip(&self.pool_after)
            .enumerate()
            .map(|(i, ((conv, bn), pool))| ChainLayer {
                conv,
                bn,
                input: i,
                residual: None,
                relu: true,
                pool: if *pool { 2 } else { 1 },
            })
            .collect();
        let f = conv_bn_chain(x, &chain, mode)?.flatten_from(1)?;
        let logits = self.fc.forward(&f)?;
        Ok((f, logits))
    }

    pub fn bns(&self) -> Vec<&BatchNorm> {
        self.blocks.iter().map(|(_, bn)| bn).collect()
    }
}
