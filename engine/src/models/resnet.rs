//! CIFAR-style ResNet (He et al. 2016, §4.2) for small images: a 3×3 stem, three stages of
//! n basic blocks with widths w, 2w, 4w (strides 1, 2, 2), global average pooling and a linear
//! classifier; depth = 6n + 2 (20 → n = 3, 26 → n = 4). Shortcuts that change shape are
//! 1×1 convolution + BN (option B).

use crate::error::{EngineError, Result};
use crate::nn::{conv_bn_chain, BatchNorm, BnMode, ChainLayer, Conv2d, Linear, VarSource};
use candle_core::Tensor;

struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn new(vs: &mut VarSource, name: &str, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            Some((
                Conv2d::new(
                    vs,
                    &format!("{name}.shortcut.conv"),
                    cin,
                    cout,
                    1,
                    stride,
                    0,
                )?,
                BatchNorm::new(vs, &format!("{name}.shortcut.bn"), cout)?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv2d::new(vs, &format!("{name}.conv1"), cin, cout, 3, stride, 1)?,
            bn1: BatchNorm::new(vs, &format!("{name}.bn1"), cout)?,
            conv2: Conv2d::new(vs, &format!("{name}.conv2"), cout, cout, 3, 1, 1)?,
            bn2: BatchNorm::new(vs, &format!("{name}.bn2"), cout)?,
            shortcut,
        })
    }
}

pub struct ResNet {
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<Block>,
    fc: Linear,
}

impl ResNet {
    pub fn new(
        vs: &mut VarSource,
        depth: usize,
        width: usize,
        in_ch: usize,
        classes: usize,
    ) -> Result<Self> {
        if depth < 8 || !(depth - 2).is_multiple_of(6) {
            return Err(EngineError::InvalidSpec(format!(
                "resnet depth must be 6n+2 (8, 14, 20, 26, 32, ...), got {depth}"
            )));
        }
        let n = (depth - 2) / 6;
        let stem = Conv2d::new(vs, "stem.conv", in_ch, width, 3, 1, 1)?;
        let stem_bn = BatchNorm::new(vs, "stem.bn", width)?;
        let mut blocks = vec![];
        let mut cin = width;
        for (stage, (mult, stride)) in [(1, 1), (2, 2), (4, 2)].into_iter().enumerate() {
            let cout = width * mult;
            for i in 0..n {
                let s = if i == 0 { stride } else { 1 };
                blocks.push(Block::new(
                    vs,
                    &format!("layer{}.{i}", stage + 1),
                    cin,
                    cout,
                    s,
                )?);
                cin = cout;
            }
        }
        let fc = Linear::new(vs, "fc", cin, classes)?;
        Ok(Self {
            stem,
            stem_bn,
            blocks,
            fc,
        })
    }

    pub fn forward_features(&self, x: &Tensor, mode: BnMode) -> Result<(Tensor, Tensor)> {
        let h = conv_bn_chain(x, &self.chain(), mode)?;
        let f = h.mean((2, 3))?;
        let logits = self.fc.forward(&f)?;
        Ok((f, logits))
    }

    /// The stem and the blocks as one chain of conv-BN layers: per block conv1 → bn1 → ReLU, the
    /// projection shortcut (conv → BN) where there is one, then conv2 → bn2 + shortcut → ReLU.
    fn chain(&self) -> Vec<ChainLayer<'_>> {
        let layer = |conv, bn, input, residual, relu| ChainLayer {
            conv,
            bn,
            input,
            residual,
            relu,
            pool: 1,
        };
        let mut v = vec![layer(&self.stem, &self.stem_bn, 0, None, true)];
        let mut x = 1;
        for b in &self.blocks {
            v.push(layer(&b.conv1, &b.bn1, x, None, true));
            let h = v.len();
            let s = match &b.shortcut {
                Some((c, bn)) => {
                    v.push(layer(c, bn, x, None, false));
                    v.len()
                }
                None => x,
            };
            v.push(layer(&b.conv2, &b.bn2, h, Some(s), true));
            x = v.len();
        }
        v
    }

    pub fn bns(&self) -> Vec<&BatchNorm> {
        let mut v = vec![&self.stem_bn];
        for b in &self.blocks {
            v.push(&b.bn1);
            v.push(&b.bn2);
            if let Some((_, bn)) = &b.shortcut {
                v.push(bn);
            }
        }
        v
    }
}
