//! Posts a crash interrupted: an escrow in the ledger with no task record.
//!
//! A post appends the escrow and then records the task; a node killed between the two left the
//! buyer's credits locked for a task nothing would ever run (a re-post by the buyer finishes
//! it, but a buyer who saw the post fail may never re-post). At startup, before the node takes
//! any request, the escrows without a record are listed; the engine then finishes each post
//! from the signed spec the escrow entry embeds, through the same checks a post makes, or
//! refunds the escrow when the task no longer passes them (a blob it names has gone).

use axum::http::StatusCode;
use market_ledger::EntryKind;
use market_protocol::TaskId;

use super::{lock, Node};

impl Node {
    /// Escrows with credits locked and no task record: the posts to finish (called by
    /// [`Node::open`], before the node answers anything, so no post is in flight).
    pub(super) fn find_orphan_escrows(&self) -> anyhow::Result<Vec<TaskId>> {
        let mut orphans = Vec::new();
        for (id, _) in self.ledger.open_escrows() {
            if self.store.task(&id)?.is_some() {
                continue;
            }
            // A served answer's escrow has no task: its hold (recorded before the escrow) or
            // its batch settles it (`serving::audit`).
            let served = super::Operation::ServeEscrow { answer: id }.key()?;
            if self.ledger.entry_with_key(&served)?.is_none() {
                orphans.push(id);
            }
        }
        Ok(orphans)
    }

    /// Finishes or refunds the posts [`Node::find_orphan_escrows`] found; returns how many
    /// were finished and how many refunded.
    pub async fn recover_orphan_escrows(&self) -> anyhow::Result<(usize, usize)> {
        let orphans = std::mem::take(&mut *lock(&self.orphans));
        let (mut finished, mut refunded) = (0, 0);
        for id in orphans {
            let key = super::Operation::Escrow { task: id }.key()?;
            let Some(entry) = self.ledger.entry_with_key(&key)? else {
                tracing::error!(task = %id, "an open escrow without its entry");
                continue;
            };
            let EntryKind::Escrow {
                spec: Some(signed),
                buyer,
                ..
            } = entry.body.kind
            else {
                // Escrows without a spec are not made by posts; nothing to finish.
                continue;
            };
            match self.post_task(*signed).await {
                Ok(t) => {
                    tracing::warn!(task = %t.id, "finished a post interrupted by a crash");
                    finished += 1;
                }
                Err(e)
                    if e.status.is_client_error() && e.status != StatusCode::TOO_MANY_REQUESTS =>
                {
                    // The task no longer validates: the buyer gets the credits back.
                    let Some(escrow) = self.ledger.escrow_of(&id) else {
                        continue;
                    };
                    self.append(
                        super::Operation::Refund { task: id },
                        EntryKind::Refund {
                            amount: escrow.remaining,
                            buyer,
                            task_id: id,
                        },
                    )
                    .await?;
                    tracing::warn!(task = %id, error = %e.message, "refunded a post interrupted by a crash: it no longer validates");
                    refunded += 1;
                }
                Err(e) => {
                    // Busy or failing now: tried again at the next start.
                    tracing::error!(task = %id, error = %e.message, "could not finish a post interrupted by a crash");
                }
            }
        }
        Ok((finished, refunded))
    }
}
