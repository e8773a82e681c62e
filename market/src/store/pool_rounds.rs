//! Merged rounds of pooled tasks, one entry per round, apart from the task record.

use super::{get, Store, StoreError};

impl Store {
    /// Records merged round `summary.round` of pooled task `task` (again: the same bytes).
    pub fn save_pool_round(
        &self,
        task: &market_protocol::TaskId,
        summary: &crate::model::RoundSummary,
    ) -> Result<(), StoreError> {
        let key = [task.as_bytes().as_slice(), &summary.round.to_be_bytes()].concat();
        self.pool_rounds.insert(key, serde_json::to_vec(summary)?)?;
        self.flush()
    }

    /// Merged round `round` of pooled task `task`, if it was merged.
    pub fn pool_round(
        &self,
        task: &market_protocol::TaskId,
        round: u32,
    ) -> Result<Option<crate::model::RoundSummary>, StoreError> {
        get(
            &self.pool_rounds,
            &[task.as_bytes().as_slice(), &round.to_be_bytes()].concat(),
        )
    }

    /// Every merged round of pooled task `task`, in order.
    pub fn pool_rounds(
        &self,
        task: &market_protocol::TaskId,
    ) -> Result<Vec<crate::model::RoundSummary>, StoreError> {
        self.pool_rounds
            .scan_prefix(task.as_bytes())
            .map(|item| Ok(serde_json::from_slice(&item?.1)?))
            .collect()
    }
}
