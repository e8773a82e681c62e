//! What the node remembers about tasks and participants, and what it shows about them.

use market_protocol::{
    AccountId, BlobId, CommitmentId, Signed, SlotRound, StateHash, TaskId, TaskSpec, VerdictId,
};
use serde::{Deserialize, Serialize};

use crate::audit_plan::AuditPlan;

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// Escrowed, waiting for a worker.
    Queued,
    /// Handed to a worker that is running it.
    Running {
        /// The worker.
        #[schema(value_type = String)]
        worker: AccountId,
        /// Steps or items done.
        done: u32,
        /// Steps or items in all.
        total: u32,
        /// Latest training loss.
        loss: f32,
    },
    /// The worker's commitment is recorded; verifiers are auditing it.
    Auditing {
        /// The worker.
        #[schema(value_type = String)]
        worker: AccountId,
    },
    /// Audits passed and everyone is paid.
    Settled,
    /// No worker produced a result that passed (or the task could not run).
    Rejected {
        /// Why.
        reason: String,
    },
    /// The buyer cancelled it before a result was committed; the escrow was refunded.
    Cancelled,
    /// A pooled training task between its first and last merge: its slot-rounds run (each a
    /// task of its own, `pool.slot_tasks`), and each round is merged once all its slots pass.
    Pooling {
        /// The round being run (0-based).
        round: u32,
        /// Rounds in all.
        rounds: u32,
    },
}

impl TaskState {
    /// The state's name, as in the JSON `state` field.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running { .. } => "running",
            Self::Auditing { .. } => "auditing",
            Self::Settled => "settled",
            Self::Rejected { .. } => "rejected",
            Self::Cancelled => "cancelled",
            Self::Pooling { .. } => "pooling",
        }
    }

    /// Whether the task is finished.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Settled | Self::Rejected { .. } | Self::Cancelled
        )
    }
}

/// One verifier's finding on one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerdictSummary {
    /// The verifier.
    #[schema(value_type = String)]
    pub verifier: AccountId,
    /// The verdict's id.
    #[schema(value_type = String)]
    pub verdict_id: VerdictId,
    /// Whether it passed.
    pub passed: bool,
    /// Segments checked.
    pub checked: usize,
    /// The failure, for people.
    pub detail: Option<String>,
    /// The segments it re-executed, in the challenge's order (the evidence a buyer can check
    /// against the commitment's checkpoints).
    #[serde(default)]
    pub segments: Vec<u32>,
    /// For a failure: the first segment that did not reproduce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_segment: Option<u32>,
    /// For a failure narrowed to a step: the first step inside that segment whose state
    /// differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<u32>,
    /// For a failure: why (`state_mismatch`, `bad_proof`, `withheld`, `invalid_commitment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One worker's attempt at a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    /// The worker.
    #[schema(value_type = String)]
    pub worker: AccountId,
    /// Its commitment, once made.
    #[schema(value_type = Option<String>)]
    pub commitment_id: Option<CommitmentId>,
    /// The ledger sequence number of the commitment record (its hash is the beacon).
    pub commit_seq: Option<u64>,
    /// Optimizer steps its commitment says it ran (0 for inference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Per segment, the mean training loss the commitment records (its `loss_trace`, read
    /// from binary32 bits): the run's loss curve, bound to the audited checkpoints. `null`
    /// for a value that is not a finite number (JSON has none; a cheat may commit one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_trace: Vec<Option<f32>>,
    /// The verdicts.
    pub verdicts: Vec<VerdictSummary>,
    /// Whether the attempt was accepted.
    pub accepted: bool,
    /// The audit this attempt gets: its verifiers (fewer for a reputable worker, each then
    /// sampling more) and the detection they give together; set once the commitment is
    /// recorded.
    #[serde(default)]
    pub plan: Option<crate::audit_plan::AuditPlan>,
    /// How long the worker's run took, milliseconds (sizes the verifiers' time to re-execute).
    #[serde(default)]
    pub run_millis: Option<u64>,
    /// Whether the worker's result failed its audit (confirmed by the node's re-execution):
    /// these, not runs that produced nothing, count toward `max_attempts`.
    #[serde(default)]
    pub result_failed: bool,
    /// The step at which its worker reported the run diverged, recorded before the node
    /// checks it (kept across a restart, so the reporter is not handed the task again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divergence_claim: Option<u32>,
    /// Whether the run failed for a reason not held against its worker: a pooled slot's
    /// worker that no longer kept the slot's last final state, which the node then makes
    /// whole (`NETWORK.md` section 10, "States held in part"). Such an attempt does not bar
    /// the worker from the task.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub excused: bool,
}

/// An accepted attempt being paid: written before the first payment, so a node restarted
/// halfway pays the rest from it (each payment's ledger key names the attempt, so nothing is
/// paid twice) and never re-runs or re-audits an accepted result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settlement {
    /// The accepted attempt.
    pub attempt: usize,
    /// Its worker's signed commitment (embedded in the release).
    pub commitment: Signed<market_protocol::Commitment>,
    /// The passing verdicts kept for it, each rewarded.
    pub verdicts: Vec<Signed<market_protocol::Verdict>>,
}

/// Everything the node keeps about a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The id.
    pub id: TaskId,
    /// The buyer's signed spec.
    pub spec: Signed<TaskSpec>,
    /// Order of arrival.
    pub order: u64,
    /// The state.
    pub state: TaskState,
    /// The audit promised at post.
    pub plan: AuditPlan,
    /// Verifier fee per verifier.
    pub verifier_fee: u64,
    /// Attempts so far.
    pub attempts: Vec<Attempt>,
    /// Result blobs, for the buyer only.
    pub outputs: Vec<BlobId>,
    /// Ledger sequence numbers of this task's entries.
    pub ledger_seqs: Vec<u64>,
    /// The accepted attempt's payments, from the moment it is accepted until it is settled.
    #[serde(default)]
    pub settlement: Option<Settlement>,
    /// What running it takes of a worker's machine, estimated at post (a record from before
    /// the estimate needs nothing: any worker may take it, as before).
    #[serde(default)]
    pub needs: market_protocol::Resources,
    /// Its part in a pooled training task: the pooled task itself (its rounds), or one of its
    /// slot-rounds (absent for any other task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolPart>,
}

/// A record's part in a pooled training task (`spec/COMPUTE.md` section 10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "part", rename_all = "snake_case")]
pub enum PoolPart {
    /// The pooled task its buyer posted: the rounds so far.
    Task(PoolProgress),
    /// One slot of one round, run, audited and paid as a task of its own (the same signed
    /// spec, its commitment naming the slot-round); its ledger entries name the pooled task.
    SlotRound(SlotRef),
}

/// Where a pooled task is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolProgress {
    /// Slots per round (`K`).
    pub slots: u32,
    /// Rounds (`R`).
    pub rounds: u32,
    /// The round being run; `rounds` once the last is merged.
    pub round: u32,
    /// The hash of the global state the round starts from (`G_round`), also its blob's id.
    #[schema(value_type = String)]
    pub global: StateHash,
    /// What each slot-round is paid from the escrow: the price over `rounds × slots`, shared
    /// by its verifiers' fees and its worker.
    pub budget: u64,
    /// The slot-round tasks of the current round, in slot order.
    #[schema(value_type = Vec<String>)]
    pub slot_tasks: Vec<TaskId>,
    /// Every merged round, in order: in the task's view (kept apart from its record, in the
    /// store's own tree, so a long pool's record stays small).
    #[serde(default)]
    pub history: Vec<RoundSummary>,
    /// The buyer cancelled: no round starts after the current one.
    #[serde(default)]
    pub stopping: bool,
    /// Workers whose result for one of its slot-rounds failed its audit: none of them is
    /// given another slot of this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub excluded: Vec<AccountId>,
}

/// One merged round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoundSummary {
    /// The round.
    pub round: u32,
    /// The merged state's hash (`G_{round+1}`).
    #[schema(value_type = String)]
    pub global: StateHash,
    /// The accepted slot-rounds, in slot order.
    pub slots: Vec<SlotSummary>,
    /// The merged parameters' loss on the task's held-out examples (the `arithmetic`
    /// language's held-out pairs); absent for datasets without any.
    pub eval_loss: Option<f32>,
    /// The `pool_round` ledger entry.
    pub ledger_seq: u64,
}

/// A slot's accepted run in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlotSummary {
    /// The slot-round's task.
    #[schema(value_type = String)]
    pub task: TaskId,
    /// Its worker.
    #[schema(value_type = String)]
    pub worker: AccountId,
    /// Its accepted commitment.
    #[schema(value_type = String)]
    pub commitment_id: CommitmentId,
    /// Runs of it whose result failed its audit (each slashed, the slot re-run).
    pub failed_runs: u32,
}

/// A slot-round task's place in its pool.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlotRef {
    /// The pooled task (the one in the ledger).
    #[schema(value_type = String)]
    pub parent: TaskId,
    /// The slot.
    pub slot: u32,
    /// The round.
    pub round: u32,
    /// The hash of its start state (its blob's id).
    #[schema(value_type = String)]
    pub start: StateHash,
    /// What it is paid from the escrow.
    pub budget: u64,
    /// Whether the slot starts this round with zero optimizer moments because the worker that
    /// kept them did not give them to the node when the slot moved (`spec/COMPUTE.md` 10.2):
    /// the round's start is then the global state with zero moments, as in round 0.
    #[serde(default)]
    pub fresh_moments: bool,
}

impl SlotRef {
    /// The slot-round a commitment to it names.
    pub fn slot_round(&self) -> SlotRound {
        SlotRound {
            slot: self.slot,
            round: self.round,
            start: self.start,
        }
    }
}

/// The public view of a task (no results).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskView {
    /// The id.
    #[schema(value_type = String)]
    pub id: TaskId,
    /// The buyer.
    #[schema(value_type = String)]
    pub buyer: AccountId,
    /// Training or inference.
    pub kind: String,
    /// The price in escrow.
    pub price: u64,
    /// The state.
    pub state: TaskState,
    /// The audit promised.
    pub audit: AuditPlan,
    /// Each verifier's fee, paid from the escrow.
    pub verifier_fee: u64,
    /// Attempts with their verdicts.
    pub attempts: Vec<Attempt>,
    /// Ledger sequence numbers of this task's entries.
    pub ledger_seqs: Vec<u64>,
    /// What running it takes of a worker's machine (estimated when it was posted): it goes
    /// only to a worker whose hello offers at least this much memory and disk, and its
    /// audits only to verifiers with the memory.
    #[schema(value_type = ResourcesDoc)]
    #[serde(default)]
    pub needs: market_protocol::Resources,
    /// For a queued task, what it waits for (a worker or verifier that runs its profile, or a
    /// free worker); absent when it is about to start or not queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// A pooled task's rounds, or a slot-round's place in its pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolPart>,
    /// A pooled task's current round, slot by slot (empty for any other task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<SlotStatus>,
}

/// Where one slot of a pooled task's current round is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlotStatus {
    /// The slot.
    pub slot: u32,
    /// Its slot-round task (`GET /v1/tasks/{id}` shows its attempts and verdicts).
    #[schema(value_type = String)]
    pub task: TaskId,
    /// Its state.
    pub state: TaskState,
    /// The worker of its latest run, if it has had one.
    #[schema(value_type = Option<String>)]
    pub worker: Option<AccountId>,
    /// Its runs whose result failed an audit.
    pub failed_runs: u32,
}

/// [`market_protocol::Resources`] in the OpenAPI document.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Resources)]
#[allow(dead_code)] // Only the schema reads it.
pub struct ResourcesDoc {
    /// Peak memory of the run, in bytes.
    memory_bytes: u64,
    /// Disk for its inputs and result bundle, in bytes.
    disk_bytes: u64,
}

impl TaskRecord {
    /// The task id its participants and the ledger know it by: a slot-round's is its pooled
    /// task's (the signed spec they share).
    pub fn task_id(&self) -> TaskId {
        match &self.pool {
            Some(PoolPart::SlotRound(s)) => s.parent,
            _ => self.id,
        }
    }

    /// Its place in a pool, if it is a slot-round.
    pub fn slot(&self) -> Option<&SlotRef> {
        match &self.pool {
            Some(PoolPart::SlotRound(s)) => Some(s),
            _ => None,
        }
    }

    /// Its rounds, if it is a pooled task.
    pub fn rounds(&self) -> Option<&PoolProgress> {
        match &self.pool {
            Some(PoolPart::Task(p)) => Some(p),
            _ => None,
        }
    }

    /// The public view, as far as the record alone tells ([`crate::engine::Node::view`] adds
    /// what a queued task waits for).
    pub fn view(&self) -> TaskView {
        TaskView {
            id: self.id,
            buyer: self.spec.body.buyer,
            kind: match self.spec.body.workload {
                market_protocol::Workload::Training(_) => "training".into(),
                market_protocol::Workload::Inference(_) => "inference".into(),
            },
            price: self.spec.body.price.0,
            state: self.state.clone(),
            audit: self.plan.clone(),
            verifier_fee: self.verifier_fee,
            attempts: self.attempts.clone(),
            ledger_seqs: self.ledger_seqs.clone(),
            needs: self.needs,
            waiting_for: None,
            pool: self.pool.clone(),
            slots: Vec::new(),
        }
    }
}

/// A worker or verifier known to the node, with its record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ParticipantStats {
    /// Tasks completed and accepted (workers).
    pub tasks_done: u64,
    /// Results that failed an audit (workers).
    pub tasks_failed: u64,
    /// Audits signed (verifiers).
    pub audits: u64,
    /// Audits that passed (verifiers: verdicts of pass).
    pub audits_passed: u64,
    /// Audits that failed the worker.
    pub audits_failed: u64,
    /// Times slashed.
    pub slashed: u64,
}
