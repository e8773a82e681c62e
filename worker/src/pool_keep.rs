//! A pooled slot's last final state, kept when its slot-round finishes. The slot's next start
//! is that state with the merged parameters in place of its own (`market_compute::pool`), so
//! when the slot stays on this worker its optimizer moments, two thirds of an AdamW state, need
//! not cross the link again: the start's fetch copies every chunk this file holds in the same
//! place ([`market_net::transfer::fetch_file_reusing`]) and fetches the rest (the parameters).
//!
//! Kept when the run finishes, not when it settles: the node may merge the round and assign the
//! next one before this worker has read its `settled`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use market_compute::bundle::Bundle;
use market_protocol::TaskId;

/// Pooled tasks whose last final state is kept; the least recently kept go first.
const KEPT_POOLS: usize = 8;

/// How long a kept state lasts without a newer one of its pool (a pool that ended, or that
/// moved this worker's slot elsewhere, leaves one behind).
const POOL_KEEP: Duration = Duration::from_secs(24 * 3600);

fn pools_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pools")
}

/// Where the last final state of this worker's slot of pooled task `task_id` is kept.
pub fn kept_state(data_dir: &Path, task_id: &TaskId) -> PathBuf {
    pools_dir(data_dir).join(format!("{task_id}.st"))
}

/// Keeps checkpoint `last` of `bundle`, the final state of a finished slot-round of pooled
/// task `task_id`, as [`kept_state`] (a hard link, or a copy where links fail; replacing the
/// one kept before), then prunes ([`prune`]).
pub fn keep_final_state(
    data_dir: &Path,
    task_id: &TaskId,
    bundle: &Bundle,
    last: u32,
) -> std::io::Result<()> {
    let dir = pools_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let to = kept_state(data_dir, task_id);
    let part = to.with_extension(format!("st.{}.part", std::process::id()));
    let _ = std::fs::remove_file(&part);
    let from = bundle.checkpoint_path(last);
    if std::fs::hard_link(&from, &part).is_err() {
        std::fs::copy(&from, &part)?;
    }
    std::fs::rename(&part, &to)?;
    // Its age counts from now (a link shares the checkpoint's times).
    std::fs::File::options()
        .write(true)
        .open(&to)?
        .set_modified(SystemTime::now())?;
    prune(data_dir)
}

/// Removes kept states beyond the [`KEPT_POOLS`] most recently kept, those kept more than
/// [`POOL_KEEP`] ago, and part files: when a state is kept and when the worker starts.
pub fn prune(data_dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(pools_dir(data_dir)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    let mut kept: Vec<(SystemTime, PathBuf)> = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "part") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if let Some(modified) = entry.metadata().ok().and_then(|m| m.modified().ok()) {
            kept.push((modified, path));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_states_are_kept_and_the_rest_pruned() {
        let data = tempfile::tempdir().unwrap();
        let bundle = Bundle::at(data.path().join("job"));
        bundle.create().unwrap();
        let ids: Vec<TaskId> = (0..10u8)
            .map(|i| TaskId(market_protocol::Hash::of(&[i])))
            .collect();
        for id in &ids {
            // Each run's final checkpoint is a file of its own.
            let _ = std::fs::remove_file(bundle.checkpoint_path(3));
            std::fs::write(bundle.checkpoint_path(3), b"final state").unwrap();
            keep_final_state(data.path(), id, &bundle, 3).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: Vec<bool> = ids
            .iter()
            .map(|id| kept_state(data.path(), id).is_file())
            .collect();
        assert_eq!(left, [[false; 2].as_slice(), &[true; 8]].concat());
        assert_eq!(
            std::fs::read(kept_state(data.path(), &ids[9])).unwrap(),
            b"final state"
        );
        // The job's directory goes when the slot-round settles; the kept state stays.
        std::fs::remove_dir_all(data.path().join("job")).unwrap();
        assert!(kept_state(data.path(), &ids[9]).is_file());
        // A state kept long ago is removed when the worker starts.
        let old = std::fs::File::options()
            .write(true)
            .open(kept_state(data.path(), &ids[9]))
            .unwrap();
        old.set_modified(SystemTime::now() - POOL_KEEP - Duration::from_secs(60))
            .unwrap();
        prune(data.path()).unwrap();
        assert!(!kept_state(data.path(), &ids[9]).is_file());
        assert!(kept_state(data.path(), &ids[8]).is_file());
    }
}
