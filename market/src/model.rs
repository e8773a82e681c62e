//! What the node remembers about tasks and participants, and what it shows about them.

use market_protocol::{AccountId, BlobId, CommitmentId, Signed, TaskId, TaskSpec, VerdictId};
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
