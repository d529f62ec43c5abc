//! Checkpoints in a job result, found generically: every object of the result that is exactly a
//! `CheckpointRef` (`{"path", "sha256"}`) names a checkpoint. One whose file is in the job's
//! output folder was written by the job (it goes to the object store, with its JSON sidecar as
//! metadata); any other was read by it (recorded as a use). No per-kind code.

use crate::blobs::{sha256_hex, ObjectStore};
use crate::store::NewCheckpoint;
use crate::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Component, Path};

/// Every `{path, sha256}` object in `v`, in document order.
pub fn refs(v: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                if m.len() == 2 {
                    if let (Some(Value::String(p)), Some(Value::String(s))) =
                        (m.get("path"), m.get("sha256"))
                    {
                        out.push((p.clone(), s.clone()));
                        return;
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(v, &mut out);
    out
}

fn is_plain_relative(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Checkpoints written (stored) and (sha256, path) of checkpoints read.
pub type Collected = (Vec<NewCheckpoint>, Vec<(String, String)>);

/// Split the result's checkpoints into the ones the job wrote (stored in `store` here, after
/// checking their sha256) and the (sha256, path) of the ones it read.
pub fn collect(result: &Value, out_dir: &Path, store: &ObjectStore) -> Result<Collected> {
    let mut outputs: BTreeMap<String, NewCheckpoint> = BTreeMap::new();
    let mut inputs = vec![];
    for (path, sha) in refs(result) {
        let rel = Path::new(&path);
        let file = out_dir.join(rel);
        if !(is_plain_relative(rel) && file.is_file()) {
            inputs.push((sha, path));
            continue;
        }
        if outputs.contains_key(&path) {
            continue;
        }
        let bytes = std::fs::read(&file).map_err(|e| Error::io(file.display(), e))?;
        let found = sha256_hex(&bytes);
        if found != sha {
            return Err(Error::BlobCorrupt {
                path: file.display().to_string(),
                expected: sha,
                found,
            });
        }
        store.put(&sha, &bytes)?;
        let (_, sidecar) = attune_engine::models::Model::paths(&file);
        let info = match std::fs::read_to_string(&sidecar) {
            Ok(t) => Some(serde_json::from_str(&t).map_err(|e| {
                Error::invalid(
                    sidecar.display().to_string(),
                    format!("not valid JSON: {e}"),
                )
            })?),
            Err(_) => None,
        };
        outputs.insert(
            path.clone(),
            NewCheckpoint {
                name: path,
                sha256: sha,
                size_bytes: bytes.len() as i64,
                info,
            },
        );
    }
    Ok((outputs.into_values().collect(), inputs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_outputs_and_inputs_by_shape_and_location() {
        let dir = std::env::temp_dir().join(format!("attune-ckpt-test-{}", std::process::id()));
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("adapted.safetensors"), b"weights").unwrap();
        std::fs::write(out.join("adapted.json"), br#"{"arch":"cnn"}"#).unwrap();
        let sha = sha256_hex(b"weights");
        let result = json!({
            "model": {"path": "/models/source.safetensors", "sha256": "ab".repeat(32)},
            "methods": [
                {"name": "source", "checkpoint": null},
                {"name": "tent", "checkpoint": {"path": "adapted.safetensors", "sha256": sha}},
            ],
            "not_a_ref": {"path": "x", "sha256": "y", "extra": 1},
        });
        assert_eq!(refs(&result).len(), 2);
        let store = ObjectStore::new(dir.join("store"));
        let (outs, ins) = collect(&result, &out, &store).unwrap();
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].name, "adapted.safetensors");
        assert_eq!(outs[0].size_bytes, 7);
        assert_eq!(outs[0].info, Some(json!({"arch": "cnn"})));
        assert_eq!(store.get(&sha).unwrap(), b"weights");
        assert_eq!(
            ins,
            vec![("ab".repeat(32), "/models/source.safetensors".to_string())]
        );
        // A file whose bytes do not match the result's sha256 is an error, never stored.
        std::fs::write(out.join("adapted.safetensors"), b"tampered").unwrap();
        assert!(matches!(
            collect(&result, &out, &ObjectStore::new(dir.join("store2"))),
            Err(Error::BlobCorrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
