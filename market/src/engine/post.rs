//! Posting a task: the checks, cheapest first, then the escrow and the record.
//!
//! The order matters for what a caller can make the node spend: the signature, the price and
//! the detection target cost nothing, the balance and the blob rights a lookup each, and only a funded buyer with
//! the right to every blob it names gets the expensive validation (building the dataset,
//! reading inference rows), on the blocking pool, a bounded number at a time.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use market_compute::llama::text::{sandboxed, RenderSandbox};
use market_ledger::{EntryKind, LedgerError, OpError};
use market_protocol::{AccountId, Resources, Signed, TaskId, TaskSpec, Workload};

use super::Node;
use crate::audit_plan::{self, AuditPlan};
use crate::error::ApiError;
use crate::model::{TaskRecord, TaskState};
use crate::store::BlobAccess;

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_task",
        e.to_string(),
    )
}

/// A task the node cannot take: 422, or 503 when the node's template sandbox failed (the
/// node's fault, not the task's).
fn refused(e: market_compute::ComputeError) -> ApiError {
    match e {
        market_compute::ComputeError::Sandbox(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "template_sandbox_unavailable",
            e.to_string(),
        ),
        e => invalid(e),
    }
}

impl Node {
    /// Blob storage `account` may hold: [`crate::config::NodeConfig::blob_bytes_per_credit`]
    /// for each credit of its balance and stake.
    pub fn blob_quota(&self, account: &AccountId) -> u64 {
        let credits = self
            .ledger
            .balance(account)
            .0
            .saturating_add(self.ledger.stake(account).0);
        credits.saturating_mul(self.config.blob_bytes_per_credit)
    }

    /// Validates a buyer's signed task, shows the audit plan, escrows the price and queues it.
    pub async fn post_task(&self, signed: Signed<TaskSpec>) -> Result<TaskRecord, ApiError> {
        let spec = signed
            .verify()
            .map_err(|e| ApiError::bad_request("bad_task_signature", e.to_string()))?
            .clone();
        let id = TaskId(
            signed
                .id()
                .map_err(|e| ApiError::bad_request("not_canonical", e.to_string()))?,
        );
        if let Some(existing) = self.store.task(&id).map_err(ApiError::internal)? {
            return Ok(existing);
        }
        let fees = self.config.verifier_fee * self.config.verifiers_per_task as u64;
        if spec.price.0 <= fees {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "price_too_low", format!("the price {} does not cover {} verifiers at a fee of {} each and leave anything for the worker", spec.price.0, self.config.verifiers_per_task, self.config.verifier_fee)));
        }
        audit_plan::check_target(&spec, &self.config.min_detection_target).map_err(invalid)?;
        if let Some(prog) = Node::pooled_progress(&spec) {
            // Each slot-round is audited and paid on its own, from an equal share of the price.
            if prog.budget <= fees {
                return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "price_too_low", format!("a pooled task pays each of its {} slot-rounds ({} rounds × {} slots) from its price: {} each, which does not cover {} verifiers at a fee of {} each and leave anything for the worker", u64::from(prog.rounds) * u64::from(prog.slots), prog.rounds, prog.slots, prog.budget, self.config.verifiers_per_task, self.config.verifier_fee)));
            }
        }
        // The escrow below checks the balance again, atomically; this one only spares the
        // node the validation of a task that cannot be paid for. A task whose escrow is
        // already in the ledger (a post interrupted by a crash, posted again) is let through:
        // the escrow append is idempotent, and the record is made below.
        let escrow = self.ledger.escrow_of(&id);
        let balance = self.ledger.balance(&spec.buyer);
        if balance < spec.price && escrow.is_none() {
            return Err(insufficient(&spec, balance.0));
        }
        if escrow.is_some_and(|e| e.remaining.0 == 0) {
            // Its escrow was refunded (a post interrupted by a crash that no longer
            // validated): recording it now would queue work nobody pays for.
            return Err(ApiError::conflict(
                "task_closed",
                "this task's escrow has been refunded; post it again with a new nonce",
            ));
        }
        self.check_blob_rights(&spec)?;
        let (plan, needs) = self.validate(&spec).await?;
        // Rights are checked again at the escrow: a grant revoked during validation counts.
        self.check_blob_rights(&spec)?;
        let kind = EntryKind::Escrow {
            amount: spec.price,
            buyer: spec.buyer,
            spec: Some(Box::new(signed.clone())),
            task_id: id,
        };
        let appended = match self
            .append(super::Operation::Escrow { task: id }, kind)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                return Err(match e.downcast_ref::<LedgerError>() {
                    Some(LedgerError::Refused(OpError::Overdraft { .. })) => {
                        insufficient(&spec, self.ledger.balance(&spec.buyer).0)
                    }
                    Some(LedgerError::Refused(op)) => ApiError::conflict("refused", op.to_string()),
                    _ => ApiError::internal(e),
                })
            }
        };
        let record = TaskRecord {
            id,
            spec: signed,
            order: 0,
            state: TaskState::Queued,
            plan,
            verifier_fee: self.config.verifier_fee,
            attempts: Vec::new(),
            outputs: Vec::new(),
            ledger_seqs: vec![appended.seq()],
            settlement: None,
            needs,
            pool: None,
        };
        let pooled = Node::pooled_progress(&spec);
        let record = match pooled {
            // A pooled task runs as its slot-round tasks, made round by round.
            Some(prog) => TaskRecord {
                state: TaskState::Pooling {
                    round: 0,
                    rounds: prog.rounds,
                },
                pool: Some(crate::model::PoolPart::Task(prog)),
                ..record
            },
            None => record,
        };
        let record = self.store.insert_task(record).map_err(ApiError::internal)?;
        // Kept for as long as the task is: whoever runs or audits it reads these. (Kept alive
        // until here by the rights check, which counts as a use.)
        for blob in spec.named_blobs() {
            self.store.pin_blob(&blob).map_err(ApiError::internal)?;
        }
        self.emit(&record);
        if record.rounds().is_some() {
            // Its first round's tasks (retried by the engine if this fails).
            let _ = self.advance_pool(&id).await;
            return Ok(self
                .store
                .task(&id)
                .map_err(ApiError::internal)?
                .unwrap_or(record));
        }
        self.wake.notify_one();
        Ok(record)
    }

    /// A task may name only blobs its buyer holds or was granted: the blob ids are public
    /// (results are in the ledger), the blobs are not.
    fn check_blob_rights(&self, spec: &TaskSpec) -> Result<(), ApiError> {
        let now = crate::auth::unix_now();
        for blob in spec.named_blobs() {
            // A use keeps the blob from expiring while the post is validated and escrowed.
            self.store
                .touch_blob(&blob, now)
                .map_err(ApiError::internal)?;
            match self
                .store
                .blob_access(&blob, &spec.buyer)
                .map_err(ApiError::internal)?
            {
                None => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unknown_blob",
                        format!("the task names blob {blob}, which is not stored here: upload it first"),
                    ))
                }
                Some(BlobAccess::None) => {
                    return Err(ApiError::forbidden(format!(
                        "the task names blob {blob}, which account {} neither uploaded nor was granted (POST /v1/blobs/{blob}/grants, by its owner)",
                        spec.buyer
                    )))
                }
                Some(BlobAccess::Holder | BlobAccess::Granted) => {}
            }
        }
        Ok(())
    }

    /// Builds the task's job and audit plan as a worker would, and estimates what running it
    /// takes (`market_compute::resources`), on the blocking pool, at most
    /// [`crate::config::NodeConfig::max_concurrent_validations`] at once. Built with the task's
    /// own profile: the node referees split verdicts and makes ringers by re-executing, so it
    /// takes only tasks its own build can run (a node for `cuda` tasks is built with the
    /// `cuda` feature and has a GPU).
    async fn validate(&self, spec: &TaskSpec) -> Result<(AuditPlan, Resources), ApiError> {
        let wait = Duration::from_secs(self.config.validation_wait_secs);
        let deadline = tokio::time::Instant::now() + wait;
        // The buyer's own slot first, then one of the node's.
        let own = self.validating.of(spec.buyer);
        let own_permit = permit_by(
            deadline,
            own,
            format!(
                "the node validates one task post per buyer at a time and this buyer's other \
                 post took more than {}s: try again",
                self.config.validation_wait_secs
            ),
        )
        .await?;
        let permit = permit_by(
            deadline,
            Arc::clone(&self.validations),
            format!(
                "the node validates at most {} task posts at once and none freed up in {}s: try again",
                self.config.max_concurrent_validations, self.config.validation_wait_secs
            ),
        )
        .await?;
        let (spec, blobs) = (spec.clone(), self.blobs.clone());
        let verifiers = self.config.verifiers_per_task.max(1) as u64;
        let min_target = self.config.min_detection_target.clone();
        let sandbox: Arc<dyn RenderSandbox> = self.template_sandbox.clone();
        // The buyer's chat template is rendered in the sandbox (a child process with memory
        // and CPU limits), not here.
        tokio::task::spawn_blocking(move || {
            sandboxed(sandbox, || {
                let _permits = (own_permit, permit);
                // The inputs' lengths on disk (the job reads them just below anyway).
                let input_bytes: u64 = spec
                    .blobs()
                    .iter()
                    .filter_map(|id| std::fs::metadata(blobs.path(id)).ok())
                    .map(|m| m.len())
                    .sum();
                let (needs, shape) = match &spec.workload {
                    Workload::Training(_) => market_compute::TrainingJob::from_spec(&spec, &blobs)
                        .map(|job| (job.needs(input_bytes), job.bundle_shape())),
                    // Validated and sized without loading a model's weights.
                    Workload::Inference(_) => market_compute::InferenceJob::plan(&spec, &blobs)
                        .map(|job| (job.needs(input_bytes), job.bundle_shape())),
                }
                .map_err(refused)?;
                // A result its worker could not report is never posted.
                let report = market_net::transfer::done_header_bound(&shape);
                let limit = market_net::wire::MAX_HEADER_BYTES as u64;
                if report > limit {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "result_too_big_to_report",
                        format!(
                            "the worker's report of this task's result (its commitment and the \
                         manifest of {} files) would take up to {report} bytes, over the \
                         network's limit of {limit}: use fewer checkpoints or items",
                            shape.files.len()
                        ),
                    ));
                }
                let plan =
                    audit_plan::plan(&spec, &blobs, verifiers, &min_target).map_err(invalid)?;
                // An evaluation blob is read by the node alone, at every merge: checked now.
                market_compute::pool::eval_examples(&spec, &blobs).map_err(invalid)?;
                Ok((plan, needs))
            })
        })
        .await
        .map_err(ApiError::internal)?
    }
}

/// A permit of `slots` taken by `deadline`, else 429 `validation_busy` saying `why`.
async fn permit_by(
    deadline: tokio::time::Instant,
    slots: Arc<tokio::sync::Semaphore>,
    why: String,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    tokio::time::timeout_at(deadline, slots.acquire_owned())
        .await
        .map_err(|_| ApiError::new(StatusCode::TOO_MANY_REQUESTS, "validation_busy", why))?
        .map_err(ApiError::internal)
}

fn insufficient(spec: &TaskSpec, balance: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_balance",
        format!(
            "account {} has {balance} credits; the task's price is {}",
            spec.buyer, spec.price
        ),
    )
}
