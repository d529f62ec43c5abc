//! The IDX format of (Fashion-)MNIST: magic `00 00 <dtype> <ndim>`, then `ndim` big-endian u32
//! dimensions, then the data. Only unsigned-byte data (dtype 0x08) is used by these datasets.

use crate::error::{EngineError, Result};
use std::path::Path;

/// An unsigned-byte IDX array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parse IDX bytes; `expected_ndim` is checked. `path` only names the file in errors.
pub fn parse(bytes: &[u8], expected_ndim: usize, path: &Path) -> Result<Idx> {
    let bad = |msg: String| EngineError::bad_file(path, msg);
    if bytes.len() < 4 {
        return Err(bad(format!(
            "truncated IDX file: {} bytes, expected at least a 4-byte header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "not an IDX file: magic starts with {:02x} {:02x}, expected 00 00 (is it still gzip-compressed?)",
            bytes[0], bytes[1]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "IDX data type 0x{:02x}, expected 0x08 (unsigned byte)",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    if ndim != expected_ndim {
        return Err(bad(format!(
            "IDX array has {ndim} dimensions, expected {expected_ndim}"
        )));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated IDX header: {} bytes, expected {header}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    let found = bytes.len() - header;
    if found != n {
        return Err(bad(format!(
            "IDX dimensions {dims:?} need {n} data bytes, found {found} ({})",
            if found < n {
                "truncated"
            } else {
                "trailing bytes"
            }
        )));
    }
    Ok(Idx {
        dims,
        data: bytes[header..].to_vec(),
    })
}

pub fn read(path: &Path, expected_ndim: usize) -> Result<Idx> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    parse(&bytes, expected_ndim, path)
}

/// Encode an unsigned-byte array as IDX (for tests and tools).
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&(*d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t10k-images-idx3-ubyte")
    }

    #[test]
    fn parses_a_good_file() {
        let bytes = encode(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(&bytes[..8], &[0, 0, 8, 3, 0, 0, 0, 2]);
        let idx = parse(&bytes, 3, p()).unwrap();
        assert_eq!(idx.dims, vec![2, 2, 3]);
        assert_eq!(idx.data[11], 12);
    }

    #[test]
    fn truncated_file_names_file_expected_and_found() {
        let mut bytes = encode(&[2, 2, 3], &[0; 12]);
        bytes.truncate(bytes.len() - 5);
        let e = parse(&bytes, 3, p()).unwrap_err().to_string();
        assert_eq!(
            e,
            "t10k-images-idx3-ubyte: IDX dimensions [2, 2, 3] need 12 data bytes, found 7 (truncated)"
        );
        let e = parse(&bytes[..9], 3, p()).unwrap_err().to_string();
        assert!(
            e.contains("truncated IDX header: 9 bytes, expected 16"),
            "{e}"
        );
    }

    #[test]
    fn wrong_magic_and_wrong_rank() {
        let mut gz = encode(&[1], &[0]);
        gz[0] = 0x1f;
        gz[1] = 0x8b;
        let e = parse(&gz, 1, p()).unwrap_err().to_string();
        assert!(e.contains("magic starts with 1f 8b, expected 00 00"), "{e}");
        let e = parse(&encode(&[3], &[0; 3]), 3, p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("has 1 dimensions, expected 3"), "{e}");
        let mut f = encode(&[1], &[0]);
        f[2] = 0x0d;
        let e = parse(&f, 1, p()).unwrap_err().to_string();
        assert!(e.contains("data type 0x0d, expected 0x08"), "{e}");
    }
}
