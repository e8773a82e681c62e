//! A pooled slot's states as the node holds them: whole blobs, or in part ([`crate::partial`]:
//! a slot-round's final state of which the node fetched only the parameters, and the next
//! start it derives from it). The merge reads only parameters; a start held in part is served
//! to the slot's own worker, which keeps the rest. Before a slot moves to another worker (or
//! its own worker failed to run it) the node makes the start whole: it fetches the rest of the
//! final state from the worker that ran it; if that worker cannot give it for a while
//! (`P2pOptions::state_wait`), the slot starts the round with zero moments (recorded on the slot-round as
//! `fresh_moments`), since no one else holds them.

use market_compute::pool;
use market_compute::state::{param_span, params_from_span, params_to_span};
use market_compute::{TrainState, TrainingJob};
use market_protocol::{AccountId, BlobId, StateHash, TaskId};

use super::rounds::{read_global, read_state};
use super::Node;
use crate::blobs::BlobStore;
use crate::model::{PoolPart, TaskRecord};
use crate::partial::{Origin, PartialMeta};

/// A slot's final state for the merge: its step and parameters (all the outer step reads),
/// from the whole state or from the part the node holds.
pub(super) fn read_final(
    blobs: &BlobStore,
    id: &BlobId,
    job: &TrainingJob,
) -> anyhow::Result<TrainState> {
    if blobs.contains(id) {
        return read_state(blobs, id, job);
    }
    let (meta, tail) = blobs.partial().tail(id)?;
    let span = param_span(&job.layout, meta.entry.size)
        .filter(|s| s.start >= meta.tail_offset())
        .ok_or_else(|| anyhow::anyhow!("state {id} holds no parameters where its tail is"))?;
    let at = |x: u64| (x - meta.tail_offset()) as usize;
    let step = tail
        .get(at(span.end)..)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| anyhow::anyhow!("state {id} has no step after its parameters"))?;
    Ok(TrainState {
        step,
        params: params_from_span(&tail[at(span.start)..at(span.end)]),
        m: Vec::new(),
        v: Vec::new(),
    })
}

/// Stores slot's start of the round whose global state is `global` (id `global_id`), from the
/// slot's final state `previous` of the round before (none in round 0): a whole blob when
/// `previous` is whole (or absent), else held in part like it, derived from its entry and the
/// global parameters. Returns its id.
pub(super) fn store_start(
    blobs: &BlobStore,
    pool_id: &TaskId,
    job: &TrainingJob,
    global_id: StateHash,
    global: &TrainState,
    previous: Option<&BlobId>,
) -> anyhow::Result<StateHash> {
    let whole = |prev: Option<&TrainState>| -> anyhow::Result<StateHash> {
        let start = pool::slot_start(job, global, prev);
        Ok(StateHash(blobs.put(&start.to_bytes(&job.layout)?)?.0))
    };
    let Some(prev) = previous else {
        return whole(None);
    };
    if blobs.contains(prev) {
        return whole(Some(&read_state(blobs, prev, job)?));
    }
    let (meta, mut tail) = blobs.partial().tail(prev)?;
    let span = param_span(&job.layout, meta.entry.size)
        .filter(|s| s.start >= meta.tail_offset())
        .ok_or_else(|| anyhow::anyhow!("state {prev} holds no parameters where its tail is"))?;
    let (from, to) = (
        (span.start - meta.tail_offset()) as usize,
        (span.end - meta.tail_offset()) as usize,
    );
    // The start's step is the global state's: the round's end, which the final state's is.
    anyhow::ensure!(
        tail.get(to..) == Some(&global.step.to_le_bytes()[..]),
        "slot state {prev} is not at the round's end, step {}",
        global.step
    );
    anyhow::ensure!(
        global.params.len() * 4 == to - from,
        "the global state does not fit slot state {prev}"
    );
    tail[from..to].copy_from_slice(&params_to_span(&global.params));
    let mut entry = market_net::transfer::entry_with_tail(&meta.entry, meta.from_chunk, &tail)
        .ok_or_else(|| anyhow::anyhow!("slot state {prev} has a tail of another length"))?;
    let id = BlobId(market_net::transfer::entry_root(&entry)?);
    // Described as the blob it is.
    entry.path = id.to_string();
    let start = PartialMeta {
        pool: *pool_id,
        entry,
        from_chunk: meta.from_chunk,
        origin: Origin::Start {
            previous: *prev,
            global: global_id,
        },
    };
    blobs.partial().put(&id, &start, &tail)?;
    Ok(StateHash(id.0))
}

impl Node {
    /// Makes slot-round `t`'s start whole if the node holds it in part, for a check of the
    /// run's own (a divergence report): only the worker that ran it keeps the rest, and it must
    /// give it. An error when it cannot be made whole.
    pub(super) async fn start_made_whole(&self, t: &TaskRecord) -> anyhow::Result<()> {
        let Some(slot) = t.slot() else {
            return Ok(());
        };
        let start = BlobId(slot.start.0);
        match self.blobs.partial().meta(&start).map(|m| m.origin) {
            Some(Origin::Start { previous, global }) => {
                self.make_start_whole(t, start, previous, global).await
            }
            Some(Origin::Final { .. }) => anyhow::bail!("start {start} is held as a final state"),
            None => Ok(()),
        }
    }

    /// Makes slot-round `t`'s start whole before `worker` runs it, when the node holds it in
    /// part and `worker` is not the one that keeps the rest (or has already failed to run it):
    /// see the module's doc. Returns the record, changed when the slot's moments start afresh.
    pub(super) async fn whole_start_for(
        &self,
        mut t: TaskRecord,
        worker: &AccountId,
    ) -> anyhow::Result<TaskRecord> {
        let Some(slot) = t.slot().copied() else {
            return Ok(t);
        };
        let start = BlobId(slot.start.0);
        let Some(Origin::Start { previous, global }) =
            self.blobs.partial().meta(&start).map(|m| m.origin)
        else {
            return Ok(t);
        };
        if let Some(Origin::Final { worker: holder, .. }) =
            self.blobs.partial().meta(&previous).map(|m| m.origin)
        {
            // By their current keys: a holder that rotated its key keeps its slot's moments.
            let me = self.current_key(worker);
            let own = self.current_key(&holder) == me;
            if own && t.attempts.iter().all(|a| self.current_key(&a.worker) != me) {
                return Ok(t);
            }
        }
        if let Err(e) = self.make_start_whole(&t, start, previous, global).await {
            self.fresh_moments(&mut t, global, &format!("{e:#}"))
                .await?;
        }
        Ok(t)
    }

    /// Makes the final state `previous` whole (fetching the rest from the worker that ran it,
    /// when the node holds it in part), then start `start` from it.
    async fn make_start_whole(
        &self,
        t: &TaskRecord,
        start: BlobId,
        previous: BlobId,
        global: StateHash,
    ) -> anyhow::Result<()> {
        let held = self.blobs.partial().meta(&previous);
        if self.blobs.contains(&previous) {
            // Made whole before a restart cut the tidying short.
            self.blobs.partial().remove(&previous);
        } else if let Some(mut held) = held {
            if let Origin::Final { worker, .. } = &mut held.origin {
                *worker = self.current_key(worker);
            }
            let (dispatch, file) = (self.dispatch.clone(), self.blobs.partial().file(&previous));
            let bytes =
                tokio::task::spawn_blocking(move || dispatch.fetch_state_rest(&held, &file))
                    .await??;
            tracing::info!(task = %t.id, bytes, "fetched the rest of a slot's state");
            let (blobs, file) = (self.blobs.clone(), self.blobs.partial().file(&previous));
            tokio::task::spawn_blocking(move || {
                crate::partial::put_whole(&blobs, &previous, &std::fs::read(&file)?)
            })
            .await??;
        }
        self.finish_start(t, start, previous, global).await
    }

    /// Builds start `start` whole from the whole final state `previous` and global `global`.
    async fn finish_start(
        &self,
        t: &TaskRecord,
        start: BlobId,
        previous: BlobId,
        global: StateHash,
    ) -> anyhow::Result<()> {
        let (spec, blobs) = (t.spec.body.clone(), self.blobs.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let job = TrainingJob::from_spec(&spec, &blobs)?;
            let g = read_global(&blobs, &BlobId(global.0), &job)?;
            let prev = read_state(&blobs, &previous, &job)?;
            let bytes = pool::slot_start(&job, &g, Some(&prev)).to_bytes(&job.layout)?;
            Ok(crate::partial::put_whole(&blobs, &start, &bytes)?)
        })
        .await?
    }

    /// The slot's moments are lost (their worker did not give them): slot-round `t` starts
    /// from the global state `global` with zero moments, as in round 0, recorded on it.
    async fn fresh_moments(
        &self,
        t: &mut TaskRecord,
        global: StateHash,
        why: &str,
    ) -> anyhow::Result<()> {
        let (spec, blobs) = (t.spec.body.clone(), self.blobs.clone());
        let start = tokio::task::spawn_blocking(move || -> anyhow::Result<StateHash> {
            let job = TrainingJob::from_spec(&spec, &blobs)?;
            let g = read_global(&blobs, &BlobId(global.0), &job)?;
            let start = pool::slot_start(&job, &g, None);
            Ok(StateHash(blobs.put(&start.to_bytes(&job.layout)?)?.0))
        })
        .await??;
        self.store
            .hold_result(&BlobId(start.0), &t.spec.body.buyer)?;
        if let Some(PoolPart::SlotRound(s)) = &mut t.pool {
            tracing::warn!(task = %t.id, slot = s.slot, round = s.round, %why, "a slot's moments are lost; it starts the round with zero moments");
            s.start = start;
            s.fresh_moments = true;
        }
        self.save(t)
    }
}
