//! Housekeeping off the request path: stale request nonces and expired blobs are dropped on a
//! timer, in bounded batches, so no request pays for what earlier ones left behind.

use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::auth::unix_now;

/// How often housekeeping runs.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// The most nonces or blob uploads one pass looks at (the next pass goes on).
const BATCH: usize = 100_000;

impl Node {
    /// Runs [`Node::housekeep`] every [`INTERVAL`] until the task is dropped.
    pub async fn run_housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tick.tick().await;
            let node = self.clone();
            let now = unix_now();
            match tokio::task::spawn_blocking(move || node.housekeep(now)).await {
                Ok(Ok((nonces, blobs))) if nonces + blobs > 0 => {
                    tracing::debug!(nonces, blobs, "housekeeping")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "housekeeping failed"),
                Err(e) => tracing::warn!(error = %e, "housekeeping panicked"),
            }
        }
    }

    /// One pass at time `now` (unix seconds): forgets nonces too old to be accepted again and
    /// deletes blobs no task reads whose last upload is older than `blob_ttl_secs`. Returns
    /// how many of each went.
    pub fn housekeep(&self, now: u64) -> anyhow::Result<(usize, usize)> {
        let stale = now.saturating_sub(2 * self.config.max_clock_skew_secs);
        let nonces = self.store.expire_nonces(stale, BATCH)?;
        let expired = self.store.expire_blobs(
            now.saturating_sub(self.config.blob_ttl_secs),
            BATCH,
            |id| self.blobs.remove(id),
        )?;
        Ok((nonces, expired.len()))
    }
}
