//! The request-response messages between a market node and its workers and verifiers.
//!
//! Participants dial the node and keep the connection; requests then flow both ways on it, so
//! a worker behind NAT never needs to be dialled. Everything a participant decides is a signed
//! protocol message inside these envelopes (a [`Hello`], a commitment, a verdict); the
//! envelopes themselves are authenticated by the connection (noise, with the account's key).
//! See `spec/NETWORK.md`.

use market_protocol::{
    Answer, AnswerCheck, Beacon, BlobId, Commitment, ExecutionProfile, F32Bits, Hash, Hello,
    Signed, TaskId, TaskSpec, Verdict,
};
use serde::{Deserialize, Serialize};

/// The request-response protocol name.
pub const PROTOCOL_NAME: &str = "/market/rr/1";
/// Bytes per transfer chunk (the last chunk of a file may be shorter).
pub const CHUNK_BYTES: u32 = 1 << 20;

/// How a node's refusal of a chunk of a pooled slot's start that it holds only in part ends
/// (the chunk is in the slot's last final state, which the slot's own worker keeps): a worker
/// that meets it has lost that state and says so, which the node does not hold against it.
pub const NOT_HELD_BY_NODE: &str = "is kept by the slot's worker, not held by the node";
/// Largest message header accepted, checked before allocation.
pub const MAX_HEADER_BYTES: usize = market_protocol::canonical::MAX_MESSAGE_BYTES;
/// Largest payload accepted (one chunk), checked before allocation.
pub const MAX_PAYLOAD_BYTES: usize = CHUNK_BYTES as usize;
/// Most files a manifest may list.
pub const MAX_MANIFEST_FILES: usize = 100_000;
/// Largest file a manifest may list (64 GiB).
pub const MAX_FILE_BYTES: u64 = 64 << 30;
/// Gossipsub topic for task announcements.
pub const TOPIC_TASKS: &str = "market/v1/tasks";
/// Gossipsub topic for signed ledger heads.
pub const TOPIC_HEADS: &str = "market/v1/heads";

/// Something that can be fetched in chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Source {
    /// A blob of the node's store (task inputs), readable by the peers working on a task that
    /// names it.
    Blob {
        /// Its id (the blake3 of its bytes).
        id: BlobId,
    },
    /// A file of an attempt's result bundle.
    Bundle {
        /// The task.
        task_id: TaskId,
        /// The node's job number.
        job: u64,
        /// The file's path inside the bundle (see [`crate::transfer::check_bundle_path`]).
        path: String,
    },
}

/// One file to transfer: its size and the hash of each chunk (its node in the file's BLAKE3
/// tree: [`crate::transfer::chunk_hash`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path inside the bundle, or the blob id.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// The hash of each [`CHUNK_BYTES`] chunk, in order ([`crate::transfer::chunk_hash`]).
    pub chunks: Vec<Hash>,
}

/// The files of a bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The files.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Total bytes (saturating: the sizes are a peer's claims until
    /// [`crate::transfer::check_manifest`] has bounded them).
    pub fn bytes(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |total, f| total.saturating_add(f.size))
    }
}

/// An audit the node asks a verifier for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditJob {
    /// The task.
    pub task_id: TaskId,
    /// The node's job number.
    pub job: u64,
    /// The challenge beacon: the node operator's VRF output over the commitment id.
    pub beacon: Beacon,
    /// Its ECVRF proof (also in the ledger's `commit` entry): the verifier checks it under the
    /// node's key before auditing, so no node can hand it a beacon of its choosing.
    pub beacon_proof: market_protocol::vrf::VrfProof,
    /// How many verifiers audit this commitment, each with its own sample: the verifier sizes
    /// its sample from the task's audit policy and this count.
    pub verifiers: u32,
    /// The bundle's files, fetchable from the node.
    pub manifest: Manifest,
}

/// Most answers in one batch of served answers (so a check's sample is bounded before it is
/// drawn).
pub const MAX_BATCH_ANSWERS: u32 = 65_536;

/// A served answer the node asks a verifier to check: drawn for audit from its worker's closed
/// batch by the batch beacon, with everything the verifier needs to see that the node neither
/// chose it nor changed it (the beacon's proof, the answer's Merkle path to the batch root, the
/// worker's signature), and the request and record to check in one forward pass. The weights
/// the request names are fetched from the node as a blob (readable while the check is open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerCheckJob {
    /// The node's job number.
    pub job: u64,
    /// The batch: the Merkle root over its leaves (each the message id of a signed answer).
    pub batch: Hash,
    /// The batch's worker.
    pub worker: market_protocol::AccountId,
    /// How many answers the batch holds.
    pub answers: u32,
    /// How many of them are audited: `sample_indices(beacon, answers, sampled)` names them.
    pub sampled: u32,
    /// The operator's VRF output over the batch root (`market/v1/ServeBatch`).
    pub beacon: Beacon,
    /// Its ECVRF proof.
    pub beacon_proof: market_protocol::vrf::VrfProof,
    /// This answer's index in the batch (one of the sampled ones).
    pub index: u32,
    /// Its Merkle audit path to the batch root.
    pub proof: Vec<Hash>,
    /// The request: a one-item inference task (its message id is the answer's `request`).
    pub request: TaskSpec,
    /// The worker's signed answer.
    pub answer: Signed<Answer>,
    /// The answer record (JSON) whose blake3 the answer signs.
    pub record: String,
}

/// Most models one worker serves.
pub const MAX_SERVE_OFFERS: usize = 16;
/// Longest served model name, in bytes.
pub const MAX_MODEL_NAME_BYTES: usize = 64;
/// Longest piece of streamed text in one [`Request::Text`], in bytes.
pub const MAX_TEXT_PIECE_BYTES: usize = 64 << 10;

/// A model a worker keeps loaded and answers requests for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeOffer {
    /// The GGUF weights (the node must hold the same blob, so answers can be audited).
    pub model: BlobId,
    /// The name clients ask for (`[A-Za-z0-9._:/-]`, 1 to [`MAX_MODEL_NAME_BYTES`] bytes).
    pub name: String,
    /// The profile it runs.
    pub profile: ExecutionProfile,
    /// Credits per token (prompt and generated tokens alike).
    pub price_per_token: u64,
    /// Requests it answers at once.
    pub concurrency: u32,
}

impl ServeOffer {
    /// Whether `name` is a valid model name.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_MODEL_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
    }
}

/// A request, in either direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Request {
    /// Participant to node: who I am (signed by the connection's own key).
    Hello {
        /// The signed introduction.
        hello: Signed<Hello>,
    },
    /// Node to worker: run this task (or, for a pooled task, one slot-round of it).
    Assign {
        /// The task.
        task_id: TaskId,
        /// The node's number for this piece of work.
        job: u64,
        /// Its spec.
        task: TaskSpec,
        /// For a pooled task: the slot-round to run. Its start state is the blob whose id is
        /// `slot_round.start`, fetched from the node like any input. Absent for any other task.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot_round: Option<market_protocol::SlotRound>,
    },
    /// Worker to node: how far it is.
    Progress {
        /// The task.
        task_id: TaskId,
        /// The node's job number.
        job: u64,
        /// Steps or items done.
        done: u32,
        /// Steps or items in all.
        total: u32,
        /// Latest loss.
        loss: F32Bits,
    },
    /// Worker to node: finished; fetch the bundle from me.
    Done {
        /// The task.
        task_id: TaskId,
        /// The node's job number.
        job: u64,
        /// The signed commitment.
        commitment: Signed<Commitment>,
        /// The bundle's files.
        manifest: Manifest,
    },
    /// Worker to node: the task cannot run here.
    Failed {
        /// The task.
        task_id: TaskId,
        /// The node's job number.
        job: u64,
        /// Why.
        reason: String,
    },
    /// Node to verifier: audit this.
    Audit {
        /// The job.
        job: AuditJob,
    },
    /// Verifier to node: the verdict.
    Verdict {
        /// The task.
        task_id: TaskId,
        /// The node's job number.
        job: u64,
        /// The signed verdict.
        verdict: Signed<Verdict>,
    },
    /// Node to worker: open the per-step hashes of a segment (answered with [`Response::File`]).
    OpenSteps {
        /// The task.
        task_id: TaskId,
        /// The node's job number.
        job: u64,
        /// The segment.
        segment: u32,
    },
    /// Node to worker: the node gave up on this job (its deadline passed, the worker was gone
    /// past the grace period, or its result could not be taken): stop running it and drop its
    /// files. Nothing the worker sends for the job is accepted any more.
    Cancel {
        /// The task.
        task_id: TaskId,
        /// The node's job number.
        job: u64,
        /// Why (human-readable, not normative).
        reason: String,
    },
    /// Node to worker: a task it ran has settled (for its status line).
    Settled {
        /// The task.
        task_id: TaskId,
        /// The worker's balance now.
        balance: u64,
    },
    /// Worker to node: the models it serves now (replaces its earlier list; an empty list
    /// stops serving).
    Serving {
        /// At most [`MAX_SERVE_OFFERS`].
        offers: Vec<ServeOffer>,
    },
    /// Node to worker: answer this request now, streaming its text back with
    /// [`Request::Text`] and ending with [`Request::Answered`] or [`Request::Unanswered`].
    Generate {
        /// The node's number for the request.
        request: u64,
        /// The request as a one-item inference task for a model the worker serves.
        task: TaskSpec,
    },
    /// Worker to node: the next piece of an answer's text (pieces are numbered from 0 and
    /// concatenate to the answer's text).
    Text {
        /// The request.
        request: u64,
        /// The piece's number.
        seq: u32,
        /// At most [`MAX_TEXT_PIECE_BYTES`].
        text: String,
    },
    /// Worker to node: the answer, signed.
    Answered {
        /// The request.
        request: u64,
        /// The signed answer (its `output` is the blake3 of `record`).
        answer: Signed<Answer>,
        /// The answer record (JSON, `spec/COMPUTE.md` section 11).
        record: String,
    },
    /// Worker to node: the request cannot be answered here.
    Unanswered {
        /// The request.
        request: u64,
        /// Why.
        reason: String,
    },
    /// Node to verifier: check this served answer (answered with [`Response::Ok`] at once;
    /// the finding comes back in [`Request::AnswerChecked`]).
    CheckAnswer {
        /// The job.
        job: Box<AnswerCheckJob>,
    },
    /// Verifier to node: its signed finding on a [`Request::CheckAnswer`].
    AnswerChecked {
        /// The node's job number.
        job: u64,
        /// The signed check.
        check: Signed<AnswerCheck>,
    },
    /// Size and chunk hashes of a source (answered with [`Response::File`]).
    Describe {
        /// What.
        source: Source,
    },
    /// One chunk of a source (answered with [`Response::Chunk`] and the bytes as payload).
    Fetch {
        /// What.
        source: Source,
        /// Chunk index.
        chunk: u32,
    },
}

impl Request {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Assign { .. } => "assign",
            Self::Progress { .. } => "progress",
            Self::Done { .. } => "done",
            Self::Failed { .. } => "failed",
            Self::Audit { .. } => "audit",
            Self::Verdict { .. } => "verdict",
            Self::OpenSteps { .. } => "open_steps",
            Self::Cancel { .. } => "cancel",
            Self::Settled { .. } => "settled",
            Self::Serving { .. } => "serving",
            Self::Generate { .. } => "generate",
            Self::Text { .. } => "text",
            Self::Answered { .. } => "answered",
            Self::Unanswered { .. } => "unanswered",
            Self::CheckAnswer { .. } => "check_answer",
            Self::AnswerChecked { .. } => "answer_checked",
            Self::Describe { .. } => "describe",
            Self::Fetch { .. } => "fetch",
        }
    }
}

/// A response header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Response {
    /// Accepted.
    Ok,
    /// The node accepted a [`Request::Hello`].
    Welcome {
        /// The participant's stake now.
        stake: u64,
        /// The participant's balance now.
        balance: u64,
    },
    /// A file's size and chunk hashes.
    File {
        /// The entry.
        entry: FileEntry,
    },
    /// A chunk; the bytes are the reply's payload.
    Chunk,
    /// Refused, with the reason.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A response with its payload (only [`Response::Chunk`] has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The header.
    pub response: Response,
    /// Raw bytes.
    pub payload: Vec<u8>,
}

impl Reply {
    /// A reply without payload.
    pub fn of(response: Response) -> Self {
        Self {
            response,
            payload: Vec::new(),
        }
    }

    /// A refusal.
    pub fn refused(reason: impl Into<String>) -> Self {
        Self::of(Response::Refused {
            reason: reason.into(),
        })
    }
}
