//! Library primitives the corruption recipes are built from, each re-implemented from the exact
//! semantics recorded in `reference/corruptions.md` §1.3 (scipy/skimage Gaussian, OpenCV
//! filter2D/warpAffine, scipy zoom and map_coordinates, ImageMagick motion blur, Pillow BOX resize,
//! numpy arange, the plasma fractal).
//!
//! Images are row-major `height × width` single-channel buffers: pixel `(x, y)` (column, row) is at
//! `y * width + x`. Float images are `f64`, normally in `[0, 1]`.

use rand::Rng;

// ---------------------------------------------------------------------------------------------
// Conversions and small numeric helpers
// ---------------------------------------------------------------------------------------------

/// `array / 255.` in f64, as every recipe starts.
pub(crate) fn to_unit(img: &[u8]) -> Vec<f64> {
    img.iter().map(|&v| f64::from(v) / 255.0).collect()
}

/// `np.uint8(np.clip(x, 0, 1) * 255)`: clip, scale, truncate toward zero (§1.1).
pub(crate) fn from_unit_trunc(x: &[f64]) -> Vec<u8> {
    x.iter().map(|&v| unit_to_u8(v)).collect()
}

/// One value of [`from_unit_trunc`].
#[inline]
pub(crate) fn unit_to_u8(v: f64) -> u8 {
    // `as u8` truncates toward zero and saturates (NaN -> 0); the clip makes the range explicit.
    (v.clamp(0.0, 1.0) * 255.0) as u8
}

/// Python 3 `round()` on a float: round half to even.
pub(crate) fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// `numpy.arange(start, stop, step)` for a positive step: length `ceil((stop - start) / step)`,
/// values `start + i * delta` with `delta = (start + step) - start` (numpy fills from the first
/// two values, which is why `arange(1, 1.26, 0.01)[25]` is `1.2500000000000002`).
pub(crate) fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

// ---------------------------------------------------------------------------------------------
// Borders
// ---------------------------------------------------------------------------------------------

/// How a filter reads outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Border {
    /// scipy 'nearest' / ImageMagick Edge: `aaaa|abcd|dddd`.
    Nearest,
    /// scipy 'reflect' (half-sample symmetric): `dcba|abcd|dcba`.
    Reflect,
    /// OpenCV BORDER_REFLECT_101 (whole-sample symmetric): `dcb|abcd|cba`.
    Reflect101,
}

/// Maps any integer index onto `0..n` with the given border rule (any distance from the image).
#[inline]
pub(crate) fn border_index(i: isize, n: usize, mode: Border) -> usize {
    debug_assert!(n > 0);
    if i >= 0 && (i as usize) < n {
        return i as usize;
    }
    let n_i = n as isize;
    match mode {
        Border::Nearest => i.clamp(0, n_i - 1) as usize,
        Border::Reflect => {
            let period = 2 * n_i;
            let r = i.rem_euclid(period);
            if r < n_i {
                r as usize
            } else {
                (period - 1 - r) as usize
            }
        }
        Border::Reflect101 => {
            if n == 1 {
                return 0;
            }
            let period = 2 * n_i - 2;
            let r = i.rem_euclid(period);
            if r < n_i {
                r as usize
            } else {
                (period - r) as usize
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gaussian filter (scipy.ndimage.gaussian_filter, as called by skimage.filters.gaussian)
// ---------------------------------------------------------------------------------------------

/// scipy's kernel radius: `int(truncate * sigma + 0.5)`.
pub(crate) fn gaussian_radius(sigma: f64, truncate: f64) -> usize {
    (truncate * sigma + 0.5) as usize
}

/// scipy `_gaussian_kernel1d(sigma, 0, radius)`: `exp(-t²/(2σ²))` for `t ∈ [-r, r]`, sum 1.
pub(crate) fn gaussian_kernel_1d(sigma: f64, truncate: f64) -> Vec<f64> {
    let r = gaussian_radius(sigma, truncate) as isize;
    let mut k: Vec<f64> = (-r..=r)
        .map(|t| (-0.5 / (sigma * sigma) * (t * t) as f64).exp())
        .collect();
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// 1-D correlation of every row (`axis = 1`) or every column (`axis = 0`) with a symmetric,
/// odd-length kernel, reading outside the image with `mode`.
fn correlate_axis(
    src: &[f64],
    width: usize,
    height: usize,
    kernel: &[f64],
    mode: Border,
    along_rows: bool,
) -> Vec<f64> {
    let r = (kernel.len() / 2) as isize;
    let (len, lines) = if along_rows {
        (width, height)
    } else {
        (height, width)
    };
    let mut out = vec![0.0; src.len()];
    let mut line = vec![0.0; len + 2 * r as usize];
    for l in 0..lines {
        // gather the padded line
        for (p, slot) in line.iter_mut().enumerate() {
            let i = border_index(p as isize - r, len, mode);
            *slot = if along_rows {
                src[l * width + i]
            } else {
                src[i * width + l]
            };
        }
        for o in 0..len {
            let acc: f64 = kernel
                .iter()
                .zip(&line[o..o + kernel.len()])
                .map(|(k, v)| k * v)
                .sum();
            if along_rows {
                out[l * width + o] = acc;
            } else {
                out[o * width + l] = acc;
            }
        }
    }
    out
}

/// `scipy.ndimage.gaussian_filter(img, sigma, mode, truncate)` on both axes (axis 0 then 1).
/// `sigma <= 1e-15` is the identity, as in scipy.
pub(crate) fn gaussian_filter(
    img: &[f64],
    width: usize,
    height: usize,
    sigma: f64,
    truncate: f64,
    mode: Border,
) -> Vec<f64> {
    if sigma <= 1e-15 {
        return img.to_vec();
    }
    let k = gaussian_kernel_1d(sigma, truncate);
    if k.len() == 1 {
        // radius 0: the normalised kernel is [1.0]
        return img.to_vec();
    }
    let tmp = correlate_axis(img, width, height, &k, mode, false);
    correlate_axis(&tmp, width, height, &k, mode, true)
}

// ---------------------------------------------------------------------------------------------
// 2-D correlation (OpenCV filter2D) and the defocus disk kernel
// ---------------------------------------------------------------------------------------------

/// OpenCV `filter2D(src, -1, kernel)`: correlation with a `ksize × ksize` kernel (odd), anchor at
/// the centre, border per `mode` (OpenCV's default is REFLECT_101).
pub(crate) fn correlate2d(
    img: &[f64],
    width: usize,
    height: usize,
    kernel: &[f64],
    ksize: usize,
    mode: Border,
) -> Vec<f64> {
    debug_assert_eq!(kernel.len(), ksize * ksize);
    debug_assert!(ksize % 2 == 1);
    let r = ksize / 2;
    // pad once with the border rule, then correlate without index arithmetic per tap
    let pw = width + 2 * r;
    let ph = height + 2 * r;
    let mut padded = vec![0.0; pw * ph];
    for py in 0..ph {
        let sy = border_index(py as isize - r as isize, height, mode);
        for px in 0..pw {
            let sx = border_index(px as isize - r as isize, width, mode);
            padded[py * pw + px] = img[sy * width + sx];
        }
    }
    let mut out = vec![0.0; img.len()];
    for y in 0..height {
        for x in 0..width {
            let mut acc = 0.0;
            for ky in 0..ksize {
                let row = &padded[(y + ky) * pw + x..(y + ky) * pw + x + ksize];
                let krow = &kernel[ky * ksize..(ky + 1) * ksize];
                acc += krow.iter().zip(row).map(|(k, v)| k * v).sum::<f64>();
            }
            out[y * width + x] = acc;
        }
    }
    out
}

/// The raw aliased disk of make_cifar_c.py's `disk()` before the alias blur: a 17×17 grid over
/// `L = -8..=8`, 1 where `X² + Y² ≤ r²`, normalised to sum 1 (§1.3, valid for `r ≤ 8`, which
/// covers every CIFAR severity). Returns `(kernel, 17)`.
pub(crate) fn disk_raw(radius: f64) -> (Vec<f64>, usize) {
    assert!(
        radius <= 8.0,
        "disk kernel is only defined for radius <= 8 (CIFAR), got {radius}"
    );
    const N: usize = 17;
    let mut k = vec![0.0; N * N];
    for (yi, y) in (-8i32..=8).enumerate() {
        for (xi, x) in (-8i32..=8).enumerate() {
            if f64::from(x * x + y * y) <= radius * radius {
                k[yi * N + xi] = 1.0;
            }
        }
    }
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    (k, N)
}

/// The defocus kernel `D(r, a)` of §1.3: [`disk_raw`], then OpenCV `GaussianBlur(ksize=(3,3),
/// sigmaX=a)` (weights `exp(-(i-1)²/(2a²))`, outer product, REFLECT_101), trimmed to the smallest
/// centred square holding every non-zero entry (the trimmed-away entries are exact zeros, so the
/// correlation is unchanged). Returns `(kernel, ksize)`.
pub(crate) fn defocus_kernel(radius: f64, alias_sigma: f64) -> (Vec<f64>, usize) {
    let (disk, n) = disk_raw(radius);
    let g: Vec<f64> = (0..3)
        .map(|i| (-((i as f64 - 1.0).powi(2)) / (2.0 * alias_sigma * alias_sigma)).exp())
        .collect();
    let gs: f64 = g.iter().sum();
    let g: Vec<f64> = g.iter().map(|v| v / gs).collect();
    let mut g2 = vec![0.0; 9];
    for i in 0..3 {
        for j in 0..3 {
            g2[i * 3 + j] = g[i] * g[j];
        }
    }
    let blurred = correlate2d(&disk, n, n, &g2, 3, Border::Reflect101);
    // trim to the non-zero support (symmetric about the centre)
    let c = (n / 2) as isize;
    let mut m = 0isize;
    for y in 0..n {
        for x in 0..n {
            if blurred[y * n + x] != 0.0 {
                m = m.max((y as isize - c).abs()).max((x as isize - c).abs());
            }
        }
    }
    let ks = (2 * m + 1) as usize;
    let mut k = vec![0.0; ks * ks];
    for y in 0..ks {
        for x in 0..ks {
            let sy = (c - m) as usize + y;
            let sx = (c - m) as usize + x;
            k[y * ks + x] = blurred[sy * n + sx];
        }
    }
    (k, ks)
}

// ---------------------------------------------------------------------------------------------
// ZoomCrop (make_cifar_c.py clipped_zoom with scipy zoom(order=1))
// ---------------------------------------------------------------------------------------------

/// The sizes ZoomCrop uses on one axis of length `h` for factor `z ≥ 1` (§1.3):
/// `(crop ch, crop top, resized n, trim t)`.
pub(crate) fn zoom_crop_sizes(h: usize, z: f64) -> (usize, usize, usize, usize) {
    let ch = ((h as f64 / z).ceil() as usize).clamp(1, h);
    let top = (h - ch) / 2;
    let n = (round_half_even(ch as f64 * z) as usize).max(h);
    let t = (n - h) / 2;
    (ch, top, n, t)
}

/// Bilinear sampling plan for one axis of ZoomCrop: for each output index `0..h`, the two source
/// indices (already offset by the crop top) and the weight of the second.
#[derive(Clone, Debug)]
pub(crate) struct AxisPlan {
    pub i0: Vec<usize>,
    pub i1: Vec<usize>,
    pub f: Vec<f64>,
}

/// Plan one axis of ZoomCrop: crop `[top, top+ch)`, scipy `zoom(order=1)` to `n` samples with
/// corner-aligned coordinates `o·(ch-1)/(n-1)`, keep outputs `[t, t+h)`.
pub(crate) fn zoom_axis_plan(h: usize, z: f64) -> AxisPlan {
    let (ch, top, n, t) = zoom_crop_sizes(h, z);
    let zoom = if n > 1 {
        (ch as f64 - 1.0) / (n as f64 - 1.0)
    } else {
        0.0
    };
    let mut plan = AxisPlan {
        i0: Vec::with_capacity(h),
        i1: Vec::with_capacity(h),
        f: Vec::with_capacity(h),
    };
    for o in t..t + h {
        let coord = (o as f64 * zoom).clamp(0.0, (ch - 1) as f64);
        let i0 = (coord.floor() as usize).min(ch - 1);
        let i1 = (i0 + 1).min(ch - 1);
        plan.i0.push(top + i0);
        plan.i1.push(top + i1);
        plan.f.push(coord - i0 as f64);
    }
    plan
}

/// Adds (`acc += ...`) the ZoomCrop of `img` described by the row plan `py` and column plan `px`.
pub(crate) fn zoom_crop_accumulate(
    img: &[f64],
    width: usize,
    py: &AxisPlan,
    px: &AxisPlan,
    acc: &mut [f64],
) {
    for (oy, ((&y0, &y1), &fy)) in py.i0.iter().zip(&py.i1).zip(&py.f).enumerate() {
        let r0 = &img[y0 * width..(y0 + 1) * width];
        let r1 = &img[y1 * width..(y1 + 1) * width];
        let out = &mut acc[oy * width..(oy + 1) * width];
        for (o, ((&x0, &x1), &fx)) in out.iter_mut().zip(px.i0.iter().zip(&px.i1).zip(&px.f)) {
            let a = r0[x0] + fx * (r0[x1] - r0[x0]);
            let b = r1[x0] + fx * (r1[x1] - r1[x0]);
            *o += a + fy * (b - a);
        }
    }
}

/// ZoomCrop(img, z) on both axes (§1.3); `z ≥ 1`.
pub(crate) fn clipped_zoom(img: &[f64], width: usize, height: usize, z: f64) -> Vec<f64> {
    let py = zoom_axis_plan(height, z);
    let px = zoom_axis_plan(width, z);
    let mut out = vec![0.0; img.len()];
    zoom_crop_accumulate(img, width, &py, &px, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// ImageMagick motion blur
// ---------------------------------------------------------------------------------------------

/// ImageMagick `GetMotionBlurKernel` with `GetOptimalKernelWidth1D(radius, sigma)` for
/// `radius > 0`: width `2·ceil(R)+1`, `k[i] ∝ exp(-i²/(2S²))`, normalised (§1.3).
pub(crate) fn motion_kernel(radius: f64, sigma: f64) -> Vec<f64> {
    const MAGICK_EPSILON: f64 = 1.0e-12;
    let width = 2 * radius.ceil().max(0.0) as usize + 1;
    let s = if sigma.abs() < MAGICK_EPSILON {
        MAGICK_EPSILON
    } else {
        sigma
    };
    let mut k: Vec<f64> = (0..width)
        .map(|i| (-((i * i) as f64) / (2.0 * s * s)).exp())
        .collect();
    let sum: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// ImageMagick `MotionBlurImage(radius, sigma, angle)` on an 8-bit gray image (§1.3): offsets
/// `(ceil(i·cosθ − 0.5), ceil(i·sinθ − 0.5))`, edge-clamped reads, result rounded to u8 (the
/// 8-bit PNG round trip of the original).
pub(crate) fn motion_blur_u8(
    img: &[u8],
    width: usize,
    height: usize,
    radius: f64,
    sigma: f64,
    angle_deg: f64,
) -> Vec<u8> {
    let k = motion_kernel(radius, sigma);
    let theta = std::f64::consts::PI * angle_deg / 180.0;
    let (s, c) = theta.sin_cos();
    let offsets: Vec<(isize, isize)> = (0..k.len())
        .map(|i| {
            let i = i as f64;
            ((i * c - 0.5).ceil() as isize, (i * s - 0.5).ceil() as isize)
        })
        .collect();
    let mut out = vec![0u8; img.len()];
    for y in 0..height {
        for x in 0..width {
            let mut acc = 0.0;
            for (&kv, &(dx, dy)) in k.iter().zip(&offsets) {
                let sx = border_index(x as isize + dx, width, Border::Nearest);
                let sy = border_index(y as isize + dy, height, Border::Nearest);
                acc += kv * f64::from(img[sy * width + sx]);
            }
            out[y * width + x] = acc.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Plasma fractal (fog)
// ---------------------------------------------------------------------------------------------

/// make_cifar_c.py `plasma_fractal(mapsize=n, wibbledecay)`: diamond-square on an `n × n` torus,
/// normalised to `[0, 1]` (§1.3). `n` must be a power of two ≥ 2.
pub(crate) fn plasma_fractal<R: Rng + ?Sized>(n: usize, decay: f64, rng: &mut R) -> Vec<f64> {
    assert!(
        n >= 2 && n.is_power_of_two(),
        "plasma map size must be a power of two"
    );
    let mut m = vec![0.0f64; n * n];
    let mut step = n;
    let mut wibble = 100.0f64;
    let at = |r: usize, c: usize| r * n + c;
    while step >= 2 {
        let half = step / 2;
        let g = n / step;
        // squares: centres from the four corners of each cell
        let mut vals = vec![0.0; g * g];
        for i in 0..g {
            for j in 0..g {
                let (i1, j1) = ((i + 1) % g, (j + 1) % g);
                let sum = m[at(i * step, j * step)]
                    + m[at(i1 * step, j * step)]
                    + (m[at(i * step, j1 * step)] + m[at(i1 * step, j1 * step)]);
                vals[i * g + j] = sum / 4.0 + wibble * rng.gen_range(-wibble..wibble);
            }
        }
        for i in 0..g {
            for j in 0..g {
                m[at(i * step + half, j * step + half)] = vals[i * g + j];
            }
        }
        // diamonds, top-edge midpoints M[0::s, s/2::s]
        let d = |m: &[f64], i: usize, j: usize| m[at(i * step + half, j * step + half)];
        let u = |m: &[f64], i: usize, j: usize| m[at(i * step, j * step)];
        for i in 0..g {
            for j in 0..g {
                let im1 = (i + g - 1) % g;
                let j1 = (j + 1) % g;
                let sum = (d(&m, i, j) + d(&m, im1, j)) + (u(&m, i, j) + u(&m, i, j1));
                vals[i * g + j] = sum / 4.0 + wibble * rng.gen_range(-wibble..wibble);
            }
        }
        let top_edge = vals.clone();
        // left-edge midpoints M[s/2::s, 0::s]; both use the pre-diamond D and U grids, which the
        // top-edge write does not touch.
        for i in 0..g {
            for j in 0..g {
                let jm1 = (j + g - 1) % g;
                let i1 = (i + 1) % g;
                let sum = (d(&m, i, j) + d(&m, i, jm1)) + (u(&m, i, j) + u(&m, i1, j));
                vals[i * g + j] = sum / 4.0 + wibble * rng.gen_range(-wibble..wibble);
            }
        }
        for i in 0..g {
            for j in 0..g {
                m[at(i * step, j * step + half)] = top_edge[i * g + j];
                m[at(i * step + half, j * step)] = vals[i * g + j];
            }
        }
        step /= 2;
        wibble /= decay;
    }
    let min = m.iter().cloned().fold(f64::INFINITY, f64::min);
    m.iter_mut().for_each(|v| *v -= min);
    let max = m.iter().cloned().fold(0.0, f64::max);
    if max > 0.0 {
        m.iter_mut().for_each(|v| *v /= max);
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Pillow BOX resize (8-bit, fixed point)
// ---------------------------------------------------------------------------------------------

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow `precompute_coeffs` for the BOX filter followed by `normalize_coeffs_8bpc`: for each
/// output index, `(xmin, fixed-point weights)`.
fn box_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 0.5 * filterscale;
    let mut out = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as isize).max(0) as usize;
        let xmax = ((center + support + 0.5) as isize).min(in_size as isize) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut w: Vec<f64> = (0..count)
            .map(|x| {
                let t = (x as f64 + xmin as f64 - center + 0.5) * ss;
                // Pillow >= 4.? box_filter: support (-0.5, 0.5]
                if t > -0.5 && t <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let ww: f64 = w.iter().sum();
        if ww != 0.0 {
            w.iter_mut().for_each(|v| *v /= ww);
        }
        let fixed = w
            .iter()
            .map(|&k| {
                let v = k * f64::from(1u32 << PRECISION_BITS);
                if k < 0.0 {
                    (-0.5 + v) as i32
                } else {
                    (0.5 + v) as i32
                }
            })
            .collect();
        out.push((xmin, fixed));
    }
    out
}

#[inline]
fn clip8(ss: i64) -> u8 {
    if ss >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if ss <= 0 {
        0
    } else {
        (ss >> PRECISION_BITS) as u8
    }
}

/// Pillow `Image.resize((new_w, new_h), Image.BOX)` on an 'L' image: horizontal pass then vertical
/// pass, uint8 intermediate, 22-bit fixed-point weights (§1.3). A pass whose size is unchanged is
/// skipped, as in Pillow.
pub(crate) fn pil_box_resize(
    img: &[u8],
    width: usize,
    height: usize,
    new_w: usize,
    new_h: usize,
) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let horiz: Vec<u8> = if new_w != width {
        let coeffs = box_coeffs(width, new_w);
        let mut out = vec![0u8; new_w * height];
        for y in 0..height {
            let row = &img[y * width..(y + 1) * width];
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                let mut ss = half;
                for (j, &kv) in k.iter().enumerate() {
                    ss += i64::from(row[xmin + j]) * i64::from(kv);
                }
                out[y * new_w + xx] = clip8(ss);
            }
        }
        out
    } else {
        img.to_vec()
    };
    if new_h == height {
        return horiz;
    }
    let coeffs = box_coeffs(height, new_h);
    let mut out = vec![0u8; new_w * new_h];
    for (yy, (ymin, k)) in coeffs.iter().enumerate() {
        for x in 0..new_w {
            let mut ss = half;
            for (j, &kv) in k.iter().enumerate() {
                ss += i64::from(horiz[(ymin + j) * new_w + x]) * i64::from(kv);
            }
            out[yy * new_w + x] = clip8(ss);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Affine warp (OpenCV getAffineTransform + warpAffine) and map_coordinates
// ---------------------------------------------------------------------------------------------

/// OpenCV `getAffineTransform(p1, p2)`: the 2×3 matrix `[a b c; d e f]` (row-major) with
/// `M·(x, y, 1) = p2` for each of the three `(x, y)` points. `None` when `p1` is collinear.
pub(crate) fn affine_from_points(p1: &[[f64; 2]; 3], p2: &[[f64; 2]; 3]) -> Option<[f64; 6]> {
    // Solve A·m = b with A rows (x, y, 1), once for the x outputs and once for the y outputs.
    let a = [
        [p1[0][0], p1[0][1], 1.0],
        [p1[1][0], p1[1][1], 1.0],
        [p1[2][0], p1[2][1], 1.0],
    ];
    let det3 = |m: &[[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let det = det3(&a);
    if det.abs() < 1e-12 {
        return None;
    }
    let mut out = [0.0; 6];
    for comp in 0..2 {
        let b = [p2[0][comp], p2[1][comp], p2[2][comp]];
        for col in 0..3 {
            let mut m = a;
            for row in 0..3 {
                m[row][col] = b[row];
            }
            out[comp * 3 + col] = det3(&m) / det;
        }
    }
    Some(out)
}

/// OpenCV `warpAffine(img, M, (W, H))` with INTER_LINEAR and BORDER_REFLECT_101: `out(p) =
/// in(M⁻¹·p)`, bilinear, with sub-pixel source positions quantised to 1/32 px
/// (INTER_TAB_SIZE = 32; rounded to nearest, which is what OpenCV's fixed-point path amounts to
/// up to its 1/1024 intermediate precision). `None` when `M` is singular.
pub(crate) fn warp_affine_reflect101(
    img: &[f64],
    width: usize,
    height: usize,
    m: &[f64; 6],
) -> Option<Vec<f64>> {
    // invertAffineTransform
    let d = m[0] * m[4] - m[1] * m[3];
    if d.abs() < 1e-15 {
        return None;
    }
    let d = 1.0 / d;
    let a11 = m[4] * d;
    let a22 = m[0] * d;
    let a12 = -m[1] * d;
    let a21 = -m[3] * d;
    let b1 = -a11 * m[2] - a12 * m[5];
    let b2 = -a21 * m[2] - a22 * m[5];
    let mut out = vec![0.0; img.len()];
    for y in 0..height {
        for x in 0..width {
            let sx = a11 * x as f64 + a12 * y as f64 + b1;
            let sy = a21 * x as f64 + a22 * y as f64 + b2;
            let qx = (sx * 32.0).round() as i64;
            let qy = (sy * 32.0).round() as i64;
            let x0 = qx.div_euclid(32) as isize;
            let y0 = qy.div_euclid(32) as isize;
            let fx = qx.rem_euclid(32) as f64 / 32.0;
            let fy = qy.rem_euclid(32) as f64 / 32.0;
            let cx0 = border_index(x0, width, Border::Reflect101);
            let cx1 = border_index(x0 + 1, width, Border::Reflect101);
            let cy0 = border_index(y0, height, Border::Reflect101);
            let cy1 = border_index(y0 + 1, height, Border::Reflect101);
            let v00 = img[cy0 * width + cx0];
            let v01 = img[cy0 * width + cx1];
            let v10 = img[cy1 * width + cx0];
            let v11 = img[cy1 * width + cx1];
            out[y * width + x] =
                (1.0 - fy) * ((1.0 - fx) * v00 + fx * v01) + fy * ((1.0 - fx) * v10 + fx * v11);
        }
    }
    Some(out)
}

/// scipy `map_coordinates(img, [r + dy, c + dx], order=1, mode='reflect')`: bilinear sampling at
/// `(row + dy[row, col], col + dx[row, col])`, neighbour indices mapped with the half-sample
/// symmetric 'reflect' rule.
pub(crate) fn map_coordinates_reflect(
    img: &[f64],
    width: usize,
    height: usize,
    dy: &[f64],
    dx: &[f64],
) -> Vec<f64> {
    let mut out = vec![0.0; img.len()];
    for y in 0..height {
        for x in 0..width {
            let i = y * width + x;
            let cy = y as f64 + dy[i];
            let cx = x as f64 + dx[i];
            let fy0 = cy.floor();
            let fx0 = cx.floor();
            let fy = cy - fy0;
            let fx = cx - fx0;
            let y0 = fy0 as isize;
            let x0 = fx0 as isize;
            let ry0 = border_index(y0, height, Border::Reflect);
            let ry1 = border_index(y0 + 1, height, Border::Reflect);
            let rx0 = border_index(x0, width, Border::Reflect);
            let rx1 = border_index(x0 + 1, width, Border::Reflect);
            let v00 = img[ry0 * width + rx0];
            let v01 = img[ry0 * width + rx1];
            let v10 = img[ry1 * width + rx0];
            let v11 = img[ry1 * width + rx1];
            out[i] =
                (1.0 - fy) * ((1.0 - fx) * v00 + fx * v01) + fy * ((1.0 - fx) * v10 + fx * v11);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn round_half_even_matches_python() {
        assert_eq!(round_half_even(32.5), 32.0);
        assert_eq!(round_half_even(33.5), 34.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(26.0 * arange(1.0, 1.26, 0.01)[25]), 33.0);
        assert_eq!(round_half_even(32.4), 32.0);
        assert_eq!(round_half_even(-0.5), -0.0);
    }

    #[test]
    fn arange_counts_match_numpy() {
        // zoom_blur stops 1.06, 1.11, 1.16, 1.21, 1.26 with step 0.01 -> 7, 12, 16, 21, 26 factors
        let counts: Vec<usize> = [1.06, 1.11, 1.16, 1.21, 1.26]
            .iter()
            .map(|&s| arange(1.0, s, 0.01).len())
            .collect();
        assert_eq!(counts, vec![7, 12, 16, 21, 26]);
        let z = arange(1.0, 1.26, 0.01);
        assert_eq!(z[25], 1.2500000000000002);
        assert_eq!(z[6], 1.06);
        assert_eq!(*arange(1.0, 1.16, 0.01).last().unwrap(), 1.1500000000000001);
    }

    #[test]
    fn gaussian_radius_is_scipy() {
        // int(4σ + 0.5)
        assert_eq!(gaussian_radius(0.05, 4.0), 0);
        assert_eq!(gaussian_radius(0.25, 4.0), 1);
        assert_eq!(gaussian_radius(0.4, 4.0), 2);
        assert_eq!(gaussian_radius(0.7, 4.0), 3);
        assert_eq!(gaussian_radius(1.0, 4.0), 4);
        // elastic: int(3σ + 0.5) for σ = 32·(0.2, 0.06, 0.04, 0.03) -> 19, 6, 4, 3
        let r: Vec<usize> = [6.4, 1.92, 1.28, 0.96]
            .iter()
            .map(|&s| gaussian_radius(s, 3.0))
            .collect();
        assert_eq!(r, vec![19, 6, 4, 3]);
        let k = gaussian_kernel_1d(0.4, 4.0);
        assert_eq!(k.len(), 5);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((k[1] / k[2] - (-1.0f64 / 0.32).exp()).abs() < 1e-12);
    }

    #[test]
    fn border_rules() {
        let n = 4;
        let idx = |m| (-3..7).map(|i| border_index(i, n, m)).collect::<Vec<_>>();
        assert_eq!(idx(Border::Nearest), vec![0, 0, 0, 0, 1, 2, 3, 3, 3, 3]);
        assert_eq!(idx(Border::Reflect), vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
        assert_eq!(idx(Border::Reflect101), vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn motion_kernel_matches_reference_table() {
        let k = motion_kernel(6.0, 1.0);
        assert_eq!(k.len(), 13);
        let expect = [0.570, 0.346, 0.077, 0.006];
        for (i, e) in expect.iter().enumerate() {
            assert!((k[i] - e).abs() < 5e-4, "k[{i}] = {} vs {e}", k[i]);
        }
        assert!((k[4] - 0.0002).abs() < 5e-5);
        let k5 = motion_kernel(9.0, 2.5);
        assert_eq!(k5.len(), 19);
        for (i, e) in [0.275, 0.254, 0.200, 0.134, 0.077].iter().enumerate() {
            assert!((k5[i] - e).abs() < 5e-4, "k5[{i}] = {} vs {e}", k5[i]);
        }
        assert_eq!(motion_kernel(8.0, 2.0).len(), 17);
    }

    #[test]
    fn motion_blur_offsets_and_edge_clamp() {
        // angle 0: out(x) = Σ k_i in(min(x+i, w-1)); a constant image stays constant
        let w = 10;
        let h = 3;
        let img = vec![100u8; w * h];
        assert_eq!(motion_blur_u8(&img, w, h, 6.0, 1.0, 12.0), img);
        // a single bright column at x = 5, angle 0: pixel x=4 gets k[1]·255, x=5 gets k[0]·255
        let mut img = vec![0u8; w * h];
        for y in 0..h {
            img[y * w + 5] = 255;
        }
        let out = motion_blur_u8(&img, w, h, 6.0, 1.0, 0.0);
        let k = motion_kernel(6.0, 1.0);
        assert_eq!(out[w + 5], (k[0] * 255.0).round() as u8);
        assert_eq!(out[w + 4], (k[1] * 255.0).round() as u8);
        assert_eq!(out[w + 3], (k[2] * 255.0).round() as u8);
        assert_eq!(out[w + 6], 0);
    }

    #[test]
    fn disk_kernel_shapes() {
        let (k, n) = disk_raw(1.0);
        assert_eq!(n, 17);
        let c = 8;
        let nz: Vec<(usize, usize)> = (0..n * n)
            .filter(|&i| k[i] != 0.0)
            .map(|i| (i / n, i % n))
            .collect();
        assert_eq!(
            nz,
            vec![(c - 1, c), (c, c - 1), (c, c), (c, c + 1), (c + 1, c)]
        );
        for &(y, x) in &nz {
            assert!((k[y * n + x] - 0.2).abs() < 1e-15);
        }
        let (k, _) = disk_raw(1.5);
        assert_eq!(k.iter().filter(|&&v| v != 0.0).count(), 9);
        let (k, _) = disk_raw(0.3);
        assert_eq!(k.iter().filter(|&&v| v != 0.0).count(), 1);
        // severity 1: the effective kernel is the 3×3 Gaussian σ = 0.4 (centre .845, edge .037)
        let (k, ks) = defocus_kernel(0.3, 0.4);
        assert_eq!(ks, 3);
        assert!((k[4] - 0.845).abs() < 1e-3, "{}", k[4]);
        assert!((k[1] - 0.037).abs() < 1e-3, "{}", k[1]);
        assert!((k[0] - 0.0016).abs() < 1e-4, "{}", k[0]);
        // severity 5: 3×3 box σ-leak tiny; 5×5 support but ≈ 1/9 inside
        let (k, ks) = defocus_kernel(1.5, 0.1);
        assert_eq!(ks, 5);
        assert!((k[2 * 5 + 2] - 1.0 / 9.0).abs() < 1e-5);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn zoom_crop_sizes_match_reference_for_32() {
        assert_eq!(zoom_crop_sizes(32, 1.0), (32, 0, 32, 0));
        assert_eq!(zoom_crop_sizes(32, 1.02), (32, 0, 33, 0));
        assert_eq!(zoom_crop_sizes(32, 1.04), (31, 0, 32, 0));
        assert_eq!(zoom_crop_sizes(32, 1.07), (30, 1, 32, 0));
        assert_eq!(zoom_crop_sizes(32, 1.2), (27, 2, 32, 0));
        let z = arange(1.0, 1.26, 0.01);
        assert_eq!(zoom_crop_sizes(32, z[24]), (26, 3, 32, 0)); // 1.24
        assert_eq!(zoom_crop_sizes(32, z[25]), (26, 3, 33, 0)); // 1.2500000000000002
                                                                // snow zooms
        assert_eq!(zoom_crop_sizes(32, 1.75), (19, 6, 33, 0));
        assert_eq!(zoom_crop_sizes(32, 2.25), (15, 8, 34, 1));
        assert_eq!(zoom_crop_sizes(32, 1.25), (26, 3, 32, 0)); // 32.5 -> half-even 32
                                                               // factor 1 is the identity
        let img: Vec<f64> = (0..64).map(|v| v as f64 / 64.0).collect();
        assert_eq!(clipped_zoom(&img, 8, 8, 1.0), img);
    }

    #[test]
    fn box_resize_down_and_up() {
        // 4 -> 2 averages pairs; 2 -> 4 is nearest neighbour
        let img = vec![10u8, 20, 30, 41];
        assert_eq!(pil_box_resize(&img, 4, 1, 2, 1), vec![15, 36]); // 35.5 rounds to 36
        assert_eq!(pil_box_resize(&[7, 9], 2, 1, 4, 1), vec![7, 7, 9, 9]);
        // 2-D: 4x4 -> 2x2 -> 4x4
        let img: Vec<u8> = (0..16).map(|v| (v * 10) as u8).collect();
        let down = pil_box_resize(&img, 4, 4, 2, 2);
        assert_eq!(down, vec![25, 45, 105, 125]);
        let up = pil_box_resize(&down, 2, 2, 4, 4);
        assert_eq!(&up[..4], &[25, 25, 45, 45]);
    }

    #[test]
    fn affine_solve_and_identity_warp() {
        let p1 = [[23.0, 23.0], [23.0, 5.0], [5.0, 5.0]];
        let m = affine_from_points(&p1, &p1).expect("non-collinear");
        let id = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        for (a, b) in m.iter().zip(&id) {
            assert!((a - b).abs() < 1e-12);
        }
        let p2 = [[24.0, 23.0], [24.0, 5.0], [6.0, 5.0]]; // shift right by 1
        let m = affine_from_points(&p1, &p2).expect("non-collinear");
        assert!((m[2] - 1.0).abs() < 1e-12);
        let img: Vec<f64> = (0..16).map(|v| v as f64).collect();
        let out = warp_affine_reflect101(&img, 4, 4, &m).expect("invertible");
        // out(x) = in(x - 1), reflect101 at x = 0 reads in(1)
        assert_eq!(&out[..4], &[1.0, 0.0, 1.0, 2.0]);
        assert!(affine_from_points(&[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], &p2).is_none());
    }

    #[test]
    fn map_coordinates_identity_and_shift() {
        let img: Vec<f64> = (0..16).map(|v| v as f64).collect();
        let zero = vec![0.0; 16];
        assert_eq!(map_coordinates_reflect(&img, 4, 4, &zero, &zero), img);
        let half = vec![0.5; 16];
        let out = map_coordinates_reflect(&img, 4, 4, &zero, &half);
        assert_eq!(&out[..4], &[0.5, 1.5, 2.5, 3.0]); // reflect: index 4 -> 3
    }

    #[test]
    fn plasma_is_normalised_and_seeded() {
        let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let a = plasma_fractal(32, 3.0, &mut r1);
        let b = plasma_fractal(32, 3.0, &mut r2);
        assert_eq!(a, b);
        let min = a.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(min, 0.0);
        assert_eq!(max, 1.0);
    }

    #[test]
    fn gaussian_filter_preserves_constant_and_mass() {
        let img = vec![0.5; 28 * 28];
        for mode in [Border::Nearest, Border::Reflect] {
            let out = gaussian_filter(&img, 28, 28, 1.3, 4.0, mode);
            assert!(out.iter().all(|v| (v - 0.5).abs() < 1e-12));
        }
        // radius 0 is the identity
        let img: Vec<f64> = (0..64).map(|v| v as f64).collect();
        assert_eq!(gaussian_filter(&img, 8, 8, 0.05, 4.0, Border::Nearest), img);
        // a radius much larger than the image still works (multi-period reflect)
        let out = gaussian_filter(&img, 8, 8, 5.6, 3.0, Border::Reflect);
        assert_eq!(out.len(), 64);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}
