//! A minimal `.npy` reader/writer for uint8 arrays, and the published CIFAR-10-C directory layout
//! (`reference/corruptions.md` §4).
//!
//! * Writing: NPY format version 1.0, dtype `'|u1'`, C order, header padded with spaces to a
//!   multiple of 64 bytes and ended by `\n` (what numpy itself writes).
//! * Reading: versions 1.0, 2.0 and 3.0; dtype `'|u1'`, and also little-endian integer arrays
//!   (`'|i1'`, `'<i2'`, `'<i4'`, `'<i8'`, `'<u2'`, `'<u4'`, `'<u8'`) whose values all lie in
//!   0..=255, converted to u8 (the dtype of the published `labels.npy` is unverified, §7). The
//!   magic, the header dict, `fortran_order == False` and the exact file length
//!   (`header + product(shape) · itemsize`) are checked. Every problem with the contents is
//!   [`EngineError::BadFile`], naming the file, what was expected and what was found; a file that
//!   cannot be opened or read is [`EngineError::Io`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::corrupt::Corruption;
use crate::{EngineError, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A uint8 array read from a `.npy` file (C order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyU8 {
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The element types [`read_u8`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    U8,
    I8,
    I16,
    I32,
    I64,
    U16,
    U32,
    U64,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        Some(match descr {
            "|u1" | "<u1" | ">u1" | "=u1" | "u1" | "|B" | "B" => Dtype::U8,
            "|i1" | "<i1" | ">i1" | "=i1" | "i1" | "|b" | "b" => Dtype::I8,
            "<i2" => Dtype::I16,
            "<i4" => Dtype::I32,
            "<i8" => Dtype::I64,
            "<u2" => Dtype::U16,
            "<u4" => Dtype::U32,
            "<u8" => Dtype::U64,
            _ => return None,
        })
    }

    fn itemsize(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::U16 => 2,
            Dtype::I32 | Dtype::U32 => 4,
            Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// Element `i` of little-endian `bytes` as i128 (wide enough for every accepted type).
    fn value(self, bytes: &[u8], i: usize) -> i128 {
        let s = self.itemsize();
        let b = &bytes[i * s..(i + 1) * s];
        let mut le = [0u8; 8];
        le[..s].copy_from_slice(b);
        let u = u64::from_le_bytes(le);
        match self {
            Dtype::U8 | Dtype::U16 | Dtype::U32 | Dtype::U64 => i128::from(u),
            Dtype::I8 => i128::from(b[0] as i8),
            Dtype::I16 => i128::from(u as u16 as i16),
            Dtype::I32 => i128::from(u as u32 as i32),
            Dtype::I64 => i128::from(u as i64),
        }
    }
}

/// A parsed and length-checked header.
#[derive(Clone, Debug)]
struct Header {
    descr: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte offset of the data.
    data_offset: u64,
    /// `product(shape)`.
    count: usize,
}

fn shape_str(shape: &[usize]) -> String {
    match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Header dict parsing (the Python literal numpy writes)
// ---------------------------------------------------------------------------------------------

enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

struct DictParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl DictParser<'_> {
    fn ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        self.ws();
        match self.peek() {
            Some(x) if x == c => {
                self.pos += 1;
                Ok(())
            }
            other => Err(format!(
                "expected `{}` at byte {} of the header, found {}",
                c as char,
                self.pos,
                other.map_or("the end".to_string(), |x| format!("`{}`", x as char))
            )),
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        self.ws();
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at byte {}", self.pos)),
        };
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos] != q {
            self.pos += 1;
        }
        if self.pos >= self.s.len() {
            return Err("unterminated string in the header".to_string());
        }
        let v = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(v)
    }

    fn value(&mut self) -> std::result::Result<PyValue, String> {
        self.ws();
        match self.peek() {
            Some(b'\'' | b'"') => Ok(PyValue::Str(self.string()?)),
            Some(b'(') => {
                self.pos += 1;
                let mut dims = Vec::new();
                loop {
                    self.ws();
                    match self.peek() {
                        Some(b')') => {
                            self.pos += 1;
                            break;
                        }
                        Some(c) if c.is_ascii_digit() => {
                            let start = self.pos;
                            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                                self.pos += 1;
                            }
                            let txt = std::str::from_utf8(&self.s[start..self.pos])
                                .map_err(|_| "non-ASCII digits".to_string())?;
                            let d = txt
                                .parse::<usize>()
                                .map_err(|_| format!("shape dimension {txt} is too large"))?;
                            dims.push(d);
                            // Python 2 longs: `10L`
                            if self.peek() == Some(b'L') {
                                self.pos += 1;
                            }
                            self.ws();
                            match self.peek() {
                                Some(b',') => self.pos += 1,
                                Some(b')') => {}
                                other => {
                                    return Err(format!(
                                        "expected `,` or `)` in the shape, found {}",
                                        other.map_or("the end".to_string(), |x| format!(
                                            "`{}`",
                                            x as char
                                        ))
                                    ))
                                }
                            }
                        }
                        other => {
                            return Err(format!(
                                "expected a non-negative integer in the shape, found {}",
                                other.map_or("the end".to_string(), |x| format!("`{}`", x as char))
                            ))
                        }
                    }
                }
                Ok(PyValue::Tuple(dims))
            }
            _ => {
                let rest = &self.s[self.pos..];
                if rest.starts_with(b"True") {
                    self.pos += 4;
                    Ok(PyValue::Bool(true))
                } else if rest.starts_with(b"False") {
                    self.pos += 5;
                    Ok(PyValue::Bool(false))
                } else {
                    Err(format!(
                        "expected a string, a tuple, True or False at byte {}",
                        self.pos
                    ))
                }
            }
        }
    }
}

/// Parses the header dict into `(descr, fortran_order, shape)`.
fn parse_dict(text: &[u8]) -> std::result::Result<(String, bool, Vec<usize>), String> {
    let mut p = DictParser { s: text, pos: 0 };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.ws();
        if p.peek() == Some(b'}') {
            p.pos += 1;
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        let v = p.value()?;
        match (key.as_str(), v) {
            ("descr", PyValue::Str(s)) => descr = Some(s),
            ("fortran_order", PyValue::Bool(b)) => fortran = Some(b),
            ("shape", PyValue::Tuple(t)) => shape = Some(t),
            (k @ ("descr" | "fortran_order" | "shape"), _) => {
                return Err(format!(
                    "the header key '{k}' has a value of the wrong type"
                ))
            }
            (k, _) => {
                return Err(format!(
                    "unexpected header key '{k}' (expected only 'descr', 'fortran_order', 'shape')"
                ))
            }
        }
        p.ws();
        match p.peek() {
            Some(b',') => p.pos += 1,
            Some(b'}') => {}
            _ => return Err(format!("expected `,` or `}}` at byte {}", p.pos)),
        }
    }
    p.ws();
    if p.pos != text.len() {
        return Err(format!(
            "expected only padding after the header dict, found {} more bytes",
            text.len() - p.pos
        ));
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        (d, f, s) => Err(format!(
            "the header dict lacks {}",
            [
                d.is_none().then_some("'descr'"),
                f.is_none().then_some("'fortran_order'"),
                s.is_none().then_some("'shape'"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ")
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

fn bad(path: &Path, msg: impl Into<String>) -> EngineError {
    EngineError::bad_file(path, msg)
}

/// Reads exactly `buf.len()` bytes; a short read is a truncated file.
fn read_exact_or_bad(
    f: &mut File,
    path: &Path,
    buf: &mut [u8],
    what: &str,
    file_len: u64,
) -> Result<()> {
    f.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bad(
                path,
                format!(
                    "truncated .npy file: expected at least {} more bytes of {what}, found a file of {file_len} bytes",
                    buf.len()
                ),
            )
        } else {
            EngineError::io(path, e)
        }
    })
}

/// Opens a `.npy` file, parses its header and checks the file length. The returned file is
/// positioned at the start of the data.
fn open_checked(path: &Path) -> Result<(File, Header)> {
    let mut f = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| EngineError::io(path, e))?.len();
    let mut pre = [0u8; 8];
    read_exact_or_bad(&mut f, path, &mut pre, "magic and version", file_len)?;
    if &pre[..6] != MAGIC {
        return Err(bad(
            path,
            format!(
                "not a .npy file: expected the magic bytes \\x93NUMPY, found {:?}",
                String::from_utf8_lossy(&pre[..6])
            ),
        ));
    }
    let (major, minor) = (pre[6], pre[7]);
    let (header_len, prefix) = match major {
        1 => {
            let mut b = [0u8; 2];
            read_exact_or_bad(&mut f, path, &mut b, "header length", file_len)?;
            (u64::from(u16::from_le_bytes(b)), 10u64)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            read_exact_or_bad(&mut f, path, &mut b, "header length", file_len)?;
            (u64::from(u32::from_le_bytes(b)), 12u64)
        }
        _ => {
            return Err(bad(
                path,
                format!(
                    "unsupported .npy version: expected 1.0, 2.0 or 3.0, found {major}.{minor}"
                ),
            ))
        }
    };
    let header_len_usize = usize::try_from(header_len)
        .map_err(|_| bad(path, format!("header length {header_len} is too large")))?;
    if prefix + header_len > file_len {
        return Err(bad(
            path,
            format!(
                "truncated .npy file: expected a header of {header_len} bytes after the {prefix}-byte \
                 prefix, found a file of {file_len} bytes"
            ),
        ));
    }
    let mut text = vec![0u8; header_len_usize];
    read_exact_or_bad(&mut f, path, &mut text, "header", file_len)?;
    let (descr, fortran, shape) =
        parse_dict(&text).map_err(|m| bad(path, format!("malformed .npy header: {m}")))?;
    if fortran {
        return Err(bad(
            path,
            "expected a C-order array (fortran_order False), found fortran_order True",
        ));
    }
    let dtype = Dtype::parse(&descr).ok_or_else(|| {
        bad(
            path,
            format!(
                "expected dtype '|u1' (or a little-endian integer dtype holding values 0..=255), \
                 found '{descr}'"
            ),
        )
    })?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(path, format!("shape {} overflows", shape_str(&shape))))?;
    let data_bytes = (count as u128) * dtype.itemsize() as u128;
    let data_offset = prefix + header_len;
    let expected_len = u128::from(data_offset) + data_bytes;
    if expected_len != u128::from(file_len) {
        return Err(bad(
            path,
            format!(
                "{} .npy file: expected {expected_len} bytes ({data_offset} header + {data_bytes} data \
                 for shape {} of '{descr}'), found {file_len} bytes",
                if u128::from(file_len) < expected_len {
                    "truncated"
                } else {
                    "oversized"
                },
                shape_str(&shape)
            ),
        ));
    }
    Ok((
        f,
        Header {
            descr,
            dtype,
            shape,
            data_offset,
            count,
        },
    ))
}

/// Converts raw little-endian integers to u8, requiring every value to lie in 0..=255.
fn to_u8(path: &Path, h: &Header, raw: Vec<u8>) -> Result<Vec<u8>> {
    if h.dtype == Dtype::U8 {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(h.count);
    for i in 0..h.count {
        let v = h.dtype.value(&raw, i);
        let b = u8::try_from(v).map_err(|_| {
            bad(
                path,
                format!(
                    "expected values in 0..=255 to convert dtype '{}' to uint8, found {v} at flat \
                     index {i}",
                    h.descr
                ),
            )
        })?;
        out.push(b);
    }
    Ok(out)
}

/// Reads a whole `.npy` file as uint8 (see the module docs for what is accepted and checked).
pub fn read_u8(path: &Path) -> Result<NpyU8> {
    let (mut f, h) = open_checked(path)?;
    let n = h.count * h.dtype.itemsize();
    let file_len = h.data_offset + n as u64;
    let mut raw = vec![0u8; n];
    read_exact_or_bad(&mut f, path, &mut raw, "data", file_len)?;
    let data = to_u8(path, &h, raw)?;
    Ok(NpyU8 {
        shape: h.shape,
        data,
    })
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// The full NPY v1.0 header (magic through the padded dict) for a `'|u1'` C-order array.
fn header_bytes(shape: &[usize]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': {}, }}",
        shape_str(shape)
    );
    // magic(6) + version(2) + len(2) + dict + padding + '\n' ≡ 0 (mod 64)
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(10 + header_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    // header_len < 65536 because the dict for any realistic shape is < 1 KiB (checked by caller)
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

/// Writes `data` (C order) as a `.npy` file of dtype `'|u1'` and the given shape (NPY v1.0). The
/// file is written to a temporary sibling and renamed into place. `data.len()` must equal the
/// product of `shape` ([`EngineError::InvalidSpec`] otherwise).
pub fn write_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<()> {
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(data.len()) {
        return Err(EngineError::InvalidSpec(format!(
            "writing {}: shape {} needs {} bytes, found {}",
            path.display(),
            shape_str(shape),
            count.map_or("an overflowing number of".to_string(), |c| c.to_string()),
            data.len()
        )));
    }
    if shape.len() > 64 {
        return Err(EngineError::InvalidSpec(format!(
            "writing {}: {} dimensions is more than a .npy v1.0 header can describe here",
            path.display(),
            shape.len()
        )));
    }
    let header = header_bytes(shape);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "array.npy".to_string());
    let tmp: PathBuf = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&header)?;
        f.write_all(data)?;
        f.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(EngineError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EngineError::io(path, e)
    })
}

// ---------------------------------------------------------------------------------------------
// The CIFAR-10-C layout
// ---------------------------------------------------------------------------------------------

/// Writes `dir/<corruption>.npy`, shape `(5n, H, W, 1)` uint8, severity-major (row `(s−1)·n + i`
/// is severity `s` of image `i`), and `dir/labels.npy`, shape `(5n,)` uint8 (the `n` labels
/// repeated 5 times), as in the published CIFAR-10-C (§4). `n = labels.len()` and every
/// `per_severity[s]` must hold `n·H·W` bytes. The directory is created if missing. An existing
/// `labels.npy` is left alone when identical and is an error when it differs (the other
/// corruption files in the directory would no longer match it).
pub fn write_corrupted_layout(
    dir: &Path,
    corruption: Corruption,
    per_severity: &[Vec<u8>; 5],
    labels: &[u8],
    height: usize,
    width: usize,
) -> Result<()> {
    let n = labels.len();
    let px = height.checked_mul(width).and_then(|p| p.checked_mul(n));
    for (s, imgs) in per_severity.iter().enumerate() {
        if px != Some(imgs.len()) {
            return Err(EngineError::InvalidSpec(format!(
                "{corruption} severity {}: expected {n} images of {height}×{width} ({} bytes), \
                 found {} bytes",
                s + 1,
                px.map_or("overflowing".to_string(), |p| p.to_string()),
                imgs.len()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let labels5: Vec<u8> = (0..5).flat_map(|_| labels.iter().copied()).collect();
    let labels_path = dir.join("labels.npy");
    if labels_path.exists() {
        let existing = read_u8(&labels_path)?;
        if existing.shape != [5 * n] || existing.data != labels5 {
            return Err(bad(
                &labels_path,
                format!(
                    "already holds different labels: expected shape ({},) with the {n} given \
                     labels repeated 5 times, found shape {}; remove the directory or write to \
                     another one",
                    5 * n,
                    shape_str(&existing.shape)
                ),
            ));
        }
    } else {
        write_u8(&labels_path, &[5 * n], &labels5)?;
    }
    let data: Vec<u8> = per_severity
        .iter()
        .flat_map(|v| v.iter().copied())
        .collect();
    write_u8(
        &dir.join(format!("{}.npy", corruption.name())),
        &[5 * n, height, width, 1],
        &data,
    )
}

/// Reads one severity of one corruption from a CIFAR-10-C-style directory: returns
/// `(images n·H·W, labels n, H, W)`. Accepts image files of shape `(5n, H, W)`, `(5n, H, W, 1)`
/// and `(5n, H, W, 3)`; RGB is converted to gray as `round(0.299·R + 0.587·G + 0.114·B)` (the
/// ITU-R 601 luma weights of OpenCV's RGB2GRAY and Pillow's `convert('L')`). Only that severity's
/// rows are read from disk. The first dimension must be a positive multiple of 5 and
/// `labels.npy` must be 1-D with the same length; the labels returned are rows `(s−1)·n ..
/// s·n` (identical to `labels[:n]` in the published files, where they repeat).
pub fn read_corrupted_layout(
    dir: &Path,
    corruption: Corruption,
    severity: u8,
) -> Result<(Vec<u8>, Vec<u8>, usize, usize)> {
    if !(1..=5).contains(&severity) {
        return Err(EngineError::InvalidSpec(format!(
            "corruption severity must be 1..=5, got {severity}"
        )));
    }
    let path = dir.join(format!("{}.npy", corruption.name()));
    let (mut f, h) = open_checked(&path)?;
    if h.dtype != Dtype::U8 {
        return Err(bad(
            &path,
            format!("expected image dtype '|u1', found '{}'", h.descr),
        ));
    }
    let (rows, height, width, channels) = match h.shape.as_slice() {
        &[r, hh, ww] => (r, hh, ww, 1),
        &[r, hh, ww, c @ (1 | 3)] => (r, hh, ww, c),
        other => {
            return Err(bad(
                &path,
                format!(
                    "expected an image array of shape (5n, H, W), (5n, H, W, 1) or (5n, H, W, 3), \
                     found shape {}",
                    shape_str(other)
                ),
            ))
        }
    };
    if rows == 0 || rows.checked_rem(5) != Some(0) {
        return Err(bad(
            &path,
            format!(
                "expected the first dimension to be a positive multiple of 5 (5 severities × n \
                 images), found {rows}"
            ),
        ));
    }
    let n = rows / 5;
    let per_image = height * width * channels; // no overflow: product(shape) was checked
    let start = h.data_offset + ((usize::from(severity) - 1) * n * per_image) as u64;
    f.seek(SeekFrom::Start(start))
        .map_err(|e| EngineError::io(&path, e))?;
    let mut raw = vec![0u8; n * per_image];
    let file_len = h.data_offset + h.count as u64;
    read_exact_or_bad(&mut f, &path, &mut raw, "image data", file_len)?;
    let images = if channels == 3 {
        raw.chunks_exact(3)
            .map(|p| {
                (0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
                    .round()
                    .clamp(0.0, 255.0) as u8
            })
            .collect()
    } else {
        raw
    };
    let labels_path = dir.join("labels.npy");
    let labels = read_u8(&labels_path)?;
    if labels.shape != [rows] {
        return Err(bad(
            &labels_path,
            format!(
                "expected labels of shape ({rows},) to match {}, found shape {}",
                path.display(),
                shape_str(&labels.shape)
            ),
        ));
    }
    let s = usize::from(severity) - 1;
    let labels = labels.data[s * n..(s + 1) * n].to_vec();
    Ok((images, labels, height, width))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    fn bad_msg(e: EngineError) -> (PathBuf, String) {
        match e {
            EngineError::BadFile { path, msg } => (path, msg),
            other => panic!("expected BadFile, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_and_numpy_header() {
        let d = tmpdir();
        let p = d.path().join("a.npy");
        let data: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        write_u8(&p, &[2, 3, 4], &data).expect("write");
        let bytes = std::fs::read(&p).expect("read back");
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        assert_eq!(bytes[10 + hl - 1], b'\n');
        let text = std::str::from_utf8(&bytes[10..10 + hl]).expect("ascii");
        assert!(text.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3, 4), }"));
        assert_eq!(bytes.len(), 10 + hl + data.len());
        let back = read_u8(&p).expect("read");
        assert_eq!(back.shape, vec![2, 3, 4]);
        assert_eq!(back.data, data);
        // 1-D, 0-D and empty shapes
        write_u8(&p, &[5], &[1, 2, 3, 4, 5]).expect("write 1-d");
        assert_eq!(read_u8(&p).expect("read").shape, vec![5]);
        write_u8(&p, &[], &[7]).expect("write 0-d");
        assert_eq!(
            read_u8(&p).expect("read"),
            NpyU8 {
                shape: vec![],
                data: vec![7]
            }
        );
        write_u8(&p, &[0, 28], &[]).expect("write empty");
        assert_eq!(read_u8(&p).expect("read").shape, vec![0, 28]);
        // no temporary files left behind
        let names: Vec<_> = std::fs::read_dir(d.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.npy")]);
        // wrong data length is refused before writing
        assert!(matches!(
            write_u8(&p, &[2, 2], &[1, 2, 3]),
            Err(EngineError::InvalidSpec(_))
        ));
    }

    /// Builds a .npy file by hand with an arbitrary header dict and payload.
    fn raw_npy(dict: &str, payload: &[u8]) -> Vec<u8> {
        let mut h = dict.to_string();
        while (10 + h.len() + 1).checked_rem(64) != Some(0) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn integer_label_arrays_convert_when_in_range() {
        let d = tmpdir();
        let p = d.path().join("labels.npy");
        let vals: [i64; 4] = [0, 9, 3, 255];
        let payload: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(
            &p,
            raw_npy(
                "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }",
                &payload,
            ),
        )
        .expect("write");
        assert_eq!(read_u8(&p).expect("read").data, vec![0, 9, 3, 255]);
        let payload: Vec<u8> = [1i32, 2, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(
            &p,
            raw_npy(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (3L,), }",
                &payload,
            ),
        )
        .expect("write");
        assert_eq!(read_u8(&p).expect("read").data, vec![1, 2, 7]);
        // out of range
        let payload: Vec<u8> = [1i32, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(
            &p,
            raw_npy(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }",
                &payload,
            ),
        )
        .expect("write");
        let (path, msg) = bad_msg(read_u8(&p).expect_err("-1 is not a u8"));
        assert_eq!(path, p);
        assert!(
            msg.contains("expected values in 0..=255") && msg.contains("found -1"),
            "{msg}"
        );
        // unsupported dtype
        std::fs::write(
            &p,
            raw_npy(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
                &[0; 4],
            ),
        )
        .expect("write");
        let (_, msg) = bad_msg(read_u8(&p).expect_err("float"));
        assert!(
            msg.contains("expected dtype '|u1'") && msg.contains("found '<f4'"),
            "{msg}"
        );
        // fortran order
        std::fs::write(
            &p,
            raw_npy(
                "{'descr': '|u1', 'fortran_order': True, 'shape': (2, 2), }",
                &[0; 4],
            ),
        )
        .expect("write");
        let (_, msg) = bad_msg(read_u8(&p).expect_err("fortran"));
        assert!(msg.contains("expected a C-order") && msg.contains("found fortran_order True"));
    }

    #[test]
    fn truncated_wrong_magic_and_length_mismatch_are_bad_file() {
        let d = tmpdir();
        let p = d.path().join("imgs.npy");
        let data = vec![1u8; 3 * 28 * 28];
        write_u8(&p, &[3, 28, 28], &data).expect("write");
        let good = std::fs::read(&p).expect("read");

        // truncated data
        std::fs::write(&p, &good[..good.len() - 10]).expect("write");
        let e = read_u8(&p).expect_err("truncated");
        assert!(e.to_string().contains("imgs.npy"), "{e}");
        let (path, msg) = bad_msg(e);
        assert_eq!(path, p);
        assert!(msg.contains("truncated"), "{msg}");
        assert!(
            msg.contains(&format!("expected {} bytes", good.len())),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("found {} bytes", good.len() - 10)),
            "{msg}"
        );

        // truncated inside the header
        std::fs::write(&p, &good[..20]).expect("write");
        let (_, msg) = bad_msg(read_u8(&p).expect_err("truncated header"));
        assert!(msg.contains("truncated") && msg.contains("expected") && msg.contains("found"));

        // wrong magic
        let mut wrong = good.clone();
        wrong[1..6].copy_from_slice(b"NUMPX");
        std::fs::write(&p, &wrong).expect("write");
        let e = read_u8(&p).expect_err("magic");
        assert!(e.to_string().contains("imgs.npy"), "{e}");
        let (_, msg) = bad_msg(e);
        assert!(
            msg.contains("expected the magic bytes") && msg.contains("found"),
            "{msg}"
        );

        // shape says 4 images, the data holds 3 (header rewritten with the same length)
        let text = String::from_utf8_lossy(&good[10..]).into_owned();
        let hl = u16::from_le_bytes([good[8], good[9]]) as usize;
        let hdr = text[..hl].replace("(3, 28, 28)", "(4, 28, 28)");
        let mut mismatched = good[..10].to_vec();
        mismatched.extend_from_slice(hdr.as_bytes());
        mismatched.extend_from_slice(&data);
        std::fs::write(&p, &mismatched).expect("write");
        let e = read_u8(&p).expect_err("shape mismatch");
        assert!(e.to_string().contains("imgs.npy"), "{e}");
        let (_, msg) = bad_msg(e);
        assert!(msg.contains("(4, 28, 28)"), "{msg}");
        assert!(
            msg.contains(&format!("expected {} bytes", 10 + hl + 4 * 784)),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("found {} bytes", good.len())),
            "{msg}"
        );

        // extra bytes after the data
        let mut long = good.clone();
        long.push(0);
        std::fs::write(&p, &long).expect("write");
        let (_, msg) = bad_msg(read_u8(&p).expect_err("oversized"));
        assert!(msg.contains("oversized"), "{msg}");

        // malformed header dict
        std::fs::write(&p, raw_npy("{'descr': '|u1', 'shape': (1,), }", &[0])).expect("write");
        let (_, msg) = bad_msg(read_u8(&p).expect_err("no fortran_order"));
        assert!(msg.contains("'fortran_order'"), "{msg}");

        // a missing file is an Io error naming the path
        let missing = d.path().join("nope.npy");
        let e = read_u8(&missing).expect_err("missing");
        assert!(matches!(e, EngineError::Io { .. }) && e.to_string().contains("nope.npy"));
    }

    #[test]
    fn layout_round_trip_two_corruptions() {
        let d = tmpdir();
        let dir = d.path().join("CIFAR-10-C");
        let (n, h, w) = (3usize, 28usize, 28usize);
        let labels = vec![4u8, 0, 9];
        for (ci, c) in [Corruption::Fog, Corruption::JpegCompression]
            .into_iter()
            .enumerate()
        {
            let per: [Vec<u8>; 5] = std::array::from_fn(|s| {
                (0..n * h * w)
                    .map(|i| ((i + 31 * s + 7 * ci) % 256) as u8)
                    .collect()
            });
            write_corrupted_layout(&dir, c, &per, &labels, h, w).expect("write layout");
            let raw = read_u8(&dir.join(format!("{}.npy", c.name()))).expect("read raw");
            assert_eq!(raw.shape, vec![5 * n, h, w, 1]);
            // severity-major: row (s-1)·n + i
            assert_eq!(&raw.data[2 * n * h * w..3 * n * h * w], &per[2][..]);
            for sev in 1..=5u8 {
                let (imgs, labs, hh, ww) = read_corrupted_layout(&dir, c, sev).expect("read");
                assert_eq!((hh, ww), (h, w));
                assert_eq!(imgs, per[usize::from(sev) - 1], "{c} s{sev}");
                assert_eq!(labs, labels);
            }
        }
        let lab = read_u8(&dir.join("labels.npy")).expect("labels");
        assert_eq!(lab.shape, vec![15]);
        assert_eq!(
            lab.data,
            [
                labels.clone(),
                labels.clone(),
                labels.clone(),
                labels.clone(),
                labels.clone()
            ]
            .concat()
        );
        // different labels in the same directory are refused
        let per: [Vec<u8>; 5] = std::array::from_fn(|_| vec![0u8; n * h * w]);
        let e = write_corrupted_layout(&dir, Corruption::Snow, &per, &[1, 2, 3], h, w)
            .expect_err("different labels");
        assert!(matches!(e, EngineError::BadFile { .. }), "{e:?}");
        // wrong per-severity size
        let mut per_bad = per.clone();
        per_bad[3].pop();
        assert!(matches!(
            write_corrupted_layout(&dir, Corruption::Snow, &per_bad, &labels, h, w),
            Err(EngineError::InvalidSpec(_))
        ));
        // bad severity
        assert!(matches!(
            read_corrupted_layout(&dir, Corruption::Fog, 0),
            Err(EngineError::InvalidSpec(_))
        ));
    }

    #[test]
    fn layout_accepts_3d_and_rgb_and_checks_counts() {
        let d = tmpdir();
        let dir = d.path();
        let (n, h, w) = (2usize, 8usize, 8usize);
        write_u8(
            &dir.join("labels.npy"),
            &[5 * n],
            &[1, 2, 1, 2, 1, 2, 1, 2, 1, 2],
        )
        .expect("w");
        // (5n, H, W)
        let data: Vec<u8> = (0..5 * n * h * w).map(|i| (i / (h * w)) as u8).collect();
        write_u8(&dir.join("snow.npy"), &[5 * n, h, w], &data).expect("w");
        let (imgs, labs, _, _) = read_corrupted_layout(dir, Corruption::Snow, 3).expect("read");
        assert_eq!(imgs, [vec![4u8; h * w], vec![5u8; h * w]].concat());
        assert_eq!(labs, vec![1, 2]);
        // (5n, H, W, 3) RGB -> gray
        let rgb: Vec<u8> = (0..5 * n * h * w).flat_map(|_| [200u8, 100, 50]).collect();
        write_u8(&dir.join("frost.npy"), &[5 * n, h, w, 3], &rgb).expect("w");
        let (imgs, _, _, _) = read_corrupted_layout(dir, Corruption::Frost, 1).expect("read");
        let gray = (0.299f64 * 200.0 + 0.587 * 100.0 + 0.114 * 50.0).round() as u8; // 124
        assert_eq!(gray, 124);
        assert!(imgs.len() == n * h * w && imgs.iter().all(|&v| v == gray));
        // first dimension not a multiple of 5
        write_u8(&dir.join("fog.npy"), &[7, h, w, 1], &vec![0; 7 * h * w]).expect("w");
        let (path, msg) = bad_msg(read_corrupted_layout(dir, Corruption::Fog, 1).expect_err("7"));
        assert!(path.ends_with("fog.npy"));
        assert!(
            msg.contains("multiple of 5") && msg.contains("found 7"),
            "{msg}"
        );
        // labels length mismatch
        write_u8(
            &dir.join("contrast.npy"),
            &[15, h, w, 1],
            &vec![0; 15 * h * w],
        )
        .expect("w");
        let (path, msg) =
            bad_msg(read_corrupted_layout(dir, Corruption::Contrast, 1).expect_err("labels"));
        assert!(path.ends_with("labels.npy"));
        assert!(
            msg.contains("expected labels of shape (15,)") && msg.contains("found shape (10,)")
        );
        // missing corruption file: Io naming the path
        let e = read_corrupted_layout(dir, Corruption::Pixelate, 1).expect_err("missing");
        assert!(matches!(e, EngineError::Io { .. }) && e.to_string().contains("pixelate.npy"));
    }
}
