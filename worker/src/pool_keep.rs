//! A pooled slot's last final states, kept when its slot-rounds finish. The slot's next start
//! is the final state merged last round with the merged parameters in place of its own
//! (`market_compute::pool`), so when the slot stays on this worker its optimizer moments, two
//! thirds of an AdamW state, need not cross the link again: the start's fetch copies every chunk
//! a kept state holds in the same place ([`market_net::transfer::fetch_file_reusing`]) and
//! fetches the rest (the parameters). The node holds only the parameters of a slot's final
//! state (`spec/NETWORK.md` section 10, "States held in part"): when the slot moves, it fetches
//! the moments from here, by the job that produced them ([`kept_state`]).
//!
//! Kept when the run finishes, not when it settles: the node may merge the round and assign the
//! next one before this worker has read its `settled`. The two latest of each pool are kept:
//! a later run of the slot that finished but then failed (its audit, a withheld opening) must
//! not take the place of the state the slot's next start comes from.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use market_compute::bundle::Bundle;
use market_protocol::TaskId;

/// Pooled tasks whose final states are kept; the least recently kept go first.
const KEPT_POOLS: usize = 8;

/// Final states kept per pooled task: the latest and the one before.
const KEPT_PER_POOL: usize = 2;

/// How long a kept state lasts (a pool that ended, or that moved this worker's slot elsewhere,
/// leaves some behind).
const POOL_KEEP: Duration = Duration::from_secs(24 * 3600);

fn pools_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pools")
}

/// Where the final state of this worker's run `job` of pooled task `task_id` is kept.
pub fn kept_state(data_dir: &Path, task_id: &TaskId, job: u64) -> PathBuf {
    pools_dir(data_dir).join(format!("{task_id}-{job}.st"))
}

/// The final states kept of pooled task `task_id` (any order).
pub fn kept_states(data_dir: &Path, task_id: &TaskId) -> Vec<PathBuf> {
    let prefix = format!("{task_id}-");
    let Ok(entries) = std::fs::read_dir(pools_dir(data_dir)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "st")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect()
}

/// Keeps checkpoint `last` of `bundle`, the final state of the finished run `job` of a
/// slot-round of pooled task `task_id`, as [`kept_state`] (a hard link, or a copy where links
/// fail), then prunes ([`prune`]).
pub fn keep_final_state(
    data_dir: &Path,
    task_id: &TaskId,
    job: u64,
    bundle: &Bundle,
    last: u32,
) -> std::io::Result<()> {
    let dir = pools_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let to = kept_state(data_dir, task_id, job);
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

/// Removes part files, kept states beyond the [`KEPT_PER_POOL`] latest of their pool, those of
/// pools beyond the [`KEPT_POOLS`] most recently kept, and those kept more than [`POOL_KEEP`]
/// ago: when a state is kept and when the worker starts.
pub fn prune(data_dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(pools_dir(data_dir)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    // (pool, modified, path), newest first within a pool.
    let mut kept: Vec<(String, SystemTime, PathBuf)> = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let pool = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with(".st"))
            .and_then(|n| n.split_once('-'))
            .map(|(pool, _)| pool.to_owned());
        let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
        match (pool, modified) {
            (Some(pool), Some(modified)) => kept.push((pool, modified, path)),
            // Part files of an interrupted keep, and anything else.
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    kept.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut pools: Vec<(SystemTime, &str)> = Vec::new();
    let mut drop: Vec<&PathBuf> = Vec::new();
    for (i, (pool, modified, path)) in kept.iter().enumerate() {
        let nth = kept[..i].iter().rev().take_while(|k| &k.0 == pool).count();
        if nth == 0 {
            pools.push((*modified, pool));
        }
        let old = modified.elapsed().is_ok_and(|age| age > POOL_KEEP);
        if nth >= KEPT_PER_POOL || old {
            drop.push(path);
        }
    }
    pools.sort();
    let beyond = pools.len().saturating_sub(KEPT_POOLS);
    let gone: Vec<&str> = pools[..beyond].iter().map(|(_, p)| *p).collect();
    for (pool, _, path) in &kept {
        if gone.contains(&pool.as_str()) || drop.contains(&path) {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_two_states_of_the_newest_pools_are_kept_and_the_rest_pruned() {
        let data = tempfile::tempdir().unwrap();
        let bundle = Bundle::at(data.path().join("job"));
        bundle.create().unwrap();
        let ids: Vec<TaskId> = (0..10u8)
            .map(|i| TaskId(market_protocol::Hash::of(&[i])))
            .collect();
        let keep = |id: &TaskId, job: u64, bytes: &[u8]| {
            // Each run's final checkpoint is a file of its own.
            let _ = std::fs::remove_file(bundle.checkpoint_path(3));
            std::fs::write(bundle.checkpoint_path(3), bytes).unwrap();
            keep_final_state(data.path(), id, job, &bundle, 3).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        };
        for (job, id) in ids.iter().enumerate() {
            keep(id, job as u64, b"final state");
        }
        let left: Vec<bool> = ids
            .iter()
            .enumerate()
            .map(|(job, id)| kept_state(data.path(), id, job as u64).is_file())
            .collect();
        assert_eq!(left, [[false; 2].as_slice(), &[true; 8]].concat());
        // Three runs of one pool: the latest two stay, each under its job.
        keep(&ids[9], 20, b"round 1");
        keep(&ids[9], 21, b"round 2, failed later");
        assert!(!kept_state(data.path(), &ids[9], 9).is_file());
        assert_eq!(
            std::fs::read(kept_state(data.path(), &ids[9], 20)).unwrap(),
            b"round 1"
        );
        let mut all = kept_states(data.path(), &ids[9]);
        all.sort();
        assert_eq!(
            all,
            [
                kept_state(data.path(), &ids[9], 20),
                kept_state(data.path(), &ids[9], 21)
            ]
        );
        // The job's directory goes when the slot-round settles; the kept state stays.
        std::fs::remove_dir_all(data.path().join("job")).unwrap();
        assert!(kept_state(data.path(), &ids[9], 21).is_file());
        // A state kept long ago is removed when the worker starts.
        let old = std::fs::File::options()
            .write(true)
            .open(kept_state(data.path(), &ids[9], 20))
            .unwrap();
        old.set_modified(SystemTime::now() - POOL_KEEP - Duration::from_secs(60))
            .unwrap();
        prune(data.path()).unwrap();
        assert!(!kept_state(data.path(), &ids[9], 20).is_file());
        assert!(kept_state(data.path(), &ids[9], 21).is_file());
        assert!(kept_state(data.path(), &ids[8], 8).is_file());
    }
}
