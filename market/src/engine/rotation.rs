//! Key rotation: an account moves its balance, stake and reputation to a new key (both keys
//! sign; `ledger/README.md`, `rotate`), keeping the blobs it holds. What is later paid to, or
//! slashed from, the old key lands on the new one (the ledger follows rotations), so rotating
//! dodges nothing; still, the node asks an account to finish its work first (a connected
//! participant, a run, an audit or a served batch in progress), so that it restarts cleanly
//! under the new key.

use market_protocol::{AccountId, KeyRotation, RotationAcceptance, Signed};

use super::operations::Operation;
use super::Node;
use crate::error::ApiError;

impl Node {
    /// Rotates `rotation.from` to `rotation.to`, after the checks above. Returns the ledger
    /// sequence number of the `rotate` entry.
    pub async fn rotate(
        &self,
        rotation: Signed<KeyRotation>,
        acceptance: Signed<RotationAcceptance>,
    ) -> Result<u64, ApiError> {
        let (from, to) = (rotation.body.from, rotation.body.to);
        let busy = |what: String| {
            ApiError::conflict(
                "account_busy",
                format!("account {from} {what}: rotate its key once it is idle"),
            )
        };
        if from == self.operator.account() {
            // The operator's key signs the ledger and receives what slashes owe it.
            return Err(ApiError::forbidden("the operator's key cannot be rotated"));
        }
        if self.dispatch.workers().contains(&from) || self.dispatch.verifiers().contains(&from) {
            return Err(busy(
                "is connected as a worker or verifier (stop it first)".into(),
            ));
        }
        if self.is_busy(&from) {
            return Err(busy("is running a task".into()));
        }
        let store = &self.store;
        let open = store.open_batches().map_err(ApiError::internal)?;
        let auditing = store.batches_auditing().map_err(ApiError::internal)?;
        if open.iter().any(|(w, _)| *w == from) || auditing.iter().any(|b| b.worker == from) {
            return Err(busy(
                "has served answers whose batch is not yet settled".into(),
            ));
        }
        if self.audits_involving(&from)? {
            return Err(busy("has a result under audit, or is auditing one".into()));
        }
        let key = Operation::Rotate { from }
            .key()
            .map_err(ApiError::internal)?;
        let ledger = self.ledger.clone();
        let appended =
            tokio::task::spawn_blocking(move || ledger.rotate(key, rotation, acceptance))
                .await
                .map_err(ApiError::internal)?
                .map_err(refusal)?;
        // Also after a crash between the entry and this (start-up finishes it, too).
        self.store
            .move_blobs(&from, &to)
            .map_err(ApiError::internal)?;
        tracing::info!(%from, %to, seq = appended.entry.body.seq, "account rotated to a new key");
        Ok(appended.entry.body.seq)
    }

    /// Finishes what a crash may have interrupted after a `rotate` entry: the blob rights.
    pub fn finish_rotations(&self) -> anyhow::Result<()> {
        for (from, to) in self.ledger.state().rotations() {
            self.store.move_blobs(from, to)?;
        }
        Ok(())
    }

    /// Whether a task being audited has `account` as its worker or as one of its verifiers.
    fn audits_involving(&self, account: &AccountId) -> Result<bool, ApiError> {
        for id in self
            .store
            .task_ids_where(None, Some("auditing"), None, usize::MAX)
            .map_err(ApiError::internal)?
        {
            let Some(t) = self.store.task(&id).map_err(ApiError::internal)? else {
                continue;
            };
            if let Some(a) = t.attempts.last() {
                if a.worker == *account || a.verdicts.iter().any(|v| v.verifier == *account) {
                    return Ok(true);
                }
            }
            if let crate::model::TaskState::Auditing { worker } = &t.state {
                if worker == account {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The key `account` acts under now: the ledger's rule, which payments and slashes follow.
    pub fn current_key(&self, account: &AccountId) -> AccountId {
        self.ledger.current_key(account)
    }
}

/// A ledger refusal as the client's mistake (409, or 422 for a rotation that does not hold
/// together), anything else as the node's.
fn refusal(e: market_ledger::LedgerError) -> ApiError {
    use market_ledger::LedgerError;
    match e {
        LedgerError::Refused(op) => ApiError::conflict("rotation_refused", op.to_string()),
        // Another rotation of the same account won the race.
        LedgerError::KeyConflict { .. } => ApiError::conflict(
            "rotation_refused",
            "this account was rotated already, to another key",
        ),
        LedgerError::Evidence(ev) => ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rotation",
            ev.to_string(),
        ),
        other => ApiError::internal(other),
    }
}
