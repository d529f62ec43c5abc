//! CIFAR-style ResNet (He et al. 2016, §4.2) for small images: a 3×3 stem, three stages of
//! n basic blocks with widths w, 2w, 4w (strides 1, 2, 2), global average pooling and a linear
//! classifier; depth = 6n + 2 (20 → n = 3, 26 → n = 4). Shortcuts that change shape are
//! 1×1 convolution + BN (option B).

use crate::error::{EngineError, Result};
use crate::nn::{BatchNorm, BnMode, Conv2d, Linear, VarSource};
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

    fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let h = self.bn1.forward_conv(&self.conv1, x, mode, true, 1)?;
        let s = match &self.shortcut {
            Some((c, b)) => b.forward_conv(c, x, mode, false, 1)?,
            None => x.clone(),
        };
        // relu(bn2(conv2(h)) + s) in one op.
        self.bn2.forward_conv_add_relu(&self.conv2, &h, &s, mode)
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
        let mut h = self.stem_bn.forward_conv(&self.stem, x, mode, true, 1)?;
        for b in &self.blocks {
            h = b.forward(&h, mode)?;
        }
        let f = h.mean((2, 3))?;
        let logits = self.fc.forward(&f)?;
        Ok((f, logits))
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
