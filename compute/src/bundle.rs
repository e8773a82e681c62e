//! The result bundle: the directory a worker produces for a task, and from which a verifier
//! audits it without trusting anything but signatures, hashes and re-execution.
//!
//! ```text
//! task.json                 the task spec (canonical JSON)
//! commitment.json           the worker's signed commitment (canonical JSON)
//! leaves.json               the committed leaf hashes (checkpoint or item hashes), in order
//! checkpoints/NNNNNN.st     training: the state after checkpoint N (canonical state bytes)
//! items/NNNNNN.bin          inference: the output bytes of item N
//! steps/NNNNNN.json         training, on request: per-step state hashes of segment N
//! outputs/weights.st        training: final weights (safetensors)
//! loss.json                 training: mean loss per segment, for people
//! ```

use std::path::{Path, PathBuf};

use market_protocol::canonical::{from_canonical_bytes, to_canonical_bytes, MAX_MESSAGE_BYTES};
use market_protocol::{Commitment, Signed, StateHash, TaskSpec};

/// Largest JSON file of a bundle that is read.
const MAX_JSON_BYTES: u64 = MAX_MESSAGE_BYTES as u64;

/// Why a bundle cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file is missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A bundle directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Bundle {
    /// A bundle at `root` (not created yet, or existing).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory layout.
    pub fn create(&self) -> Result<(), BundleError> {
        for dir in ["checkpoints", "items", "steps", "outputs"] {
            let p = self.root.join(dir);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(())
    }

    /// Path of checkpoint `index`.
    pub fn checkpoint_path(&self, index: u32) -> PathBuf {
        self.root.join("checkpoints").join(format!("{index:06}.st"))
    }

    /// Path of item `index`'s output.
    pub fn item_path(&self, index: u32) -> PathBuf {
        self.root.join("items").join(format!("{index:06}.bin"))
    }

    /// Path of segment `index`'s per-step hashes.
    pub fn steps_path(&self, index: u32) -> PathBuf {
        self.root.join("steps").join(format!("{index:06}.json"))
    }

    /// Path of the final weights.
    pub fn weights_path(&self) -> PathBuf {
        self.root.join("outputs").join("weights.st")
    }

    /// Writes `bytes` to `path` inside the bundle, atomically: to a temporary file renamed
    /// into place, so a worker killed mid-write leaves the old file or the new one, never a
    /// torn one (a resumed run reads them back).
    pub fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// Reads a file of at most `limit` bytes, checking the size before reading.
    pub fn read(&self, path: &Path, limit: u64) -> Result<Vec<u8>, BundleError> {
        let meta = std::fs::metadata(path).map_err(io(path))?;
        if meta.len() > limit {
            return Err(BundleError::Invalid {
                path: path.to_owned(),
                reason: format!("{} bytes, over the limit of {limit}", meta.len()),
            });
        }
        std::fs::read(path).map_err(io(path))
    }

    fn write_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), BundleError> {
        let path = self.root.join(name);
        let bytes = to_canonical_bytes(value).map_err(|e| BundleError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        self.write(&path, &bytes)
    }

    fn read_json<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<T, BundleError> {
        let path = self.root.join(name);
        let bytes = self.read(&path, MAX_JSON_BYTES)?;
        from_canonical_bytes(&bytes).map_err(|e| BundleError::Invalid {
            path,
            reason: e.to_string(),
        })
    }

    /// Writes the task spec.
    pub fn write_task(&self, task: &TaskSpec) -> Result<(), BundleError> {
        self.write_json("task.json", task)
    }

    /// Reads the task spec.
    pub fn read_task(&self) -> Result<TaskSpec, BundleError> {
        self.read_json("task.json")
    }

    /// Writes the signed commitment.
    pub fn write_commitment(&self, c: &Signed<Commitment>) -> Result<(), BundleError> {
        self.write_json("commitment.json", c)
    }

    /// Reads the signed commitment (not yet verified).
    pub fn read_commitment(&self) -> Result<Signed<Commitment>, BundleError> {
        self.read_json("commitment.json")
    }

    /// Writes the committed leaves.
    pub fn write_leaves(&self, leaves: &[StateHash]) -> Result<(), BundleError> {
        self.write_json("leaves.json", &leaves)
    }

    /// Reads the committed leaves.
    pub fn read_leaves(&self) -> Result<Vec<StateHash>, BundleError> {
        self.read_json("leaves.json")
    }

    /// The largest opening of a segment of `interval` steps: a JSON array of `interval`
    /// state hashes (66 bytes each with quotes, plus a comma) and its brackets, with room to
    /// spare. A node fetches no larger file when it asks a worker to open a segment.
    pub fn max_step_hashes_bytes(interval: u32) -> u64 {
        u64::from(interval) * 80 + 64
    }

    /// Writes per-step state hashes of a segment (the worker's opening of its steps).
    pub fn write_step_hashes(&self, segment: u32, hashes: &[StateHash]) -> Result<(), BundleError> {
        self.write_json(&format!("steps/{segment:06}.json"), &hashes)
    }

    /// Reads per-step state hashes of a segment, if the worker opened them.
    pub fn read_step_hashes(&self, segment: u32) -> Result<Option<Vec<StateHash>>, BundleError> {
        if !self.steps_path(segment).exists() {
            return Ok(None);
        }
        self.read_json(&format!("steps/{segment:06}.json"))
            .map(Some)
    }

    /// Writes the human-readable loss trace.
    pub fn write_loss(&self, losses: &[f32]) -> Result<(), BundleError> {
        let path = self.root.join("loss.json");
        let text = serde_json::to_string_pretty(losses).map_err(|e| BundleError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        self.write(&path, text.as_bytes())
    }

    /// Reads the loss trace written so far (a resumed run continues after its last entry).
    pub fn read_loss(&self) -> Result<Vec<f32>, BundleError> {
        let path = self.root.join("loss.json");
        let bytes = self.read(&path, MAX_JSON_BYTES)?;
        serde_json::from_slice(&bytes).map_err(|e| BundleError::Invalid {
            path,
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod step_opening_tests {
    use super::*;

    /// The node refuses openings over this bound (issue 12 item 9): an honest one, with the
    /// longest hex hashes, always fits.
    #[test]
    fn an_honest_opening_fits_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = Bundle::at(dir.path());
        std::fs::create_dir_all(dir.path().join("steps")).unwrap();
        for interval in [1u32, 7, 10, 1000] {
            let hashes = vec![StateHash(market_protocol::Hash([0xff; 32])); interval as usize];
            bundle.write_step_hashes(3, &hashes).unwrap();
            let size = std::fs::metadata(bundle.steps_path(3)).unwrap().len();
            assert!(
                size <= Bundle::max_step_hashes_bytes(interval),
                "{interval}: {size}"
            );
            // Not so loose that it lets through much more than an opening.
            assert!(
                Bundle::max_step_hashes_bytes(interval) < 2 * size + 64,
                "{interval}: {size}"
            );
        }
    }
}
