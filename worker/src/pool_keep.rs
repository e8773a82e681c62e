//! A pooled slot's last final state, kept after its slot-round settles. The slot's next start
//! is that state with the merged parameters in place of its own (`market_compute::pool`), so
//! when the slot stays on this worker its optimizer moments, two thirds of an AdamW state, need
//! not cross the link again: the start's fetch copies every chunk this file holds in the same
//! place ([`market_net::transfer::fetch_file_reusing`]) and fetches the rest (the parameters).

use std::path::{Path, PathBuf};
use std::time::Duration;

use market_compute::bundle::Bundle;
use market_protocol::{TaskId, Workload};

/// Pooled tasks whose last final state is kept; older ones are removed first.
const KEPT_POOLS: usize = 8;

/// How long a kept state lasts without a newer one of its pool (a pool that ended, or moved
/// this worker's slot elsewhere, leaves one behind).
const POOL_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Where the last final state of this worker's slot of pooled task `task_id` is kept.
pub fn kept_state(data_dir: &Path, task_id: &TaskId) -> PathBuf {
    data_dir.join("pools").join(format!("{task_id}.st"))
}

/// Moves the final checkpoint of the finished job in `job_dir` to [`kept_state`] if the job is
/// a slot-round of pooled task `task_id` (before the job's directory is removed), then removes
/// kept states beyond [`KEPT_POOLS`] or older than [`POOL_KEEP`]. Anything else is left as it is.
pub fn keep_final_state(data_dir: &Path, task_id: &TaskId, job_dir: &Path) -> anyhow::Result<()> {
    let bundle = Bundle::at(job_dir);
    let pooled = matches!(&bundle.read_task()?.workload, Workload::Training(t) if t.pool.is_some());
    if !pooled {
        return Ok(());
    }
    let last = bundle.read_commitment()?.body.segments;
    let to = kept_state(data_dir, task_id);
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::rename(bundle.checkpoint_path(last), &to)?;
    prune(&data_dir.join("pools"))
}

fn prune(dir: &Path) -> anyhow::Result<()> {
    let mut kept: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    kept.sort();
    let beyond = kept.len().saturating_sub(KEPT_POOLS);
    for (i, (modified, path)) in kept.iter().enumerate() {
        let old = modified.elapsed().is_ok_and(|age| age > POOL_KEEP);
        if i < beyond || old {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}
