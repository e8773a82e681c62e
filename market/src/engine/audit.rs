//! Auditing one attempt: the commitment goes into the ledger with the operator's VRF beacon,
//! verifiers drawn from the beacon each audit their own sample, every verdict must answer its
//! verifier's challenge, and every failure is re-executed by the node before anyone is slashed.
//! A verifier's silence or lie costs the verifier, never the worker: another is drawn, or the
//! node waits for one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use market_ledger::EntryKind;
use market_protocol::vrf::VrfProof;
use market_protocol::{
    AccountId, Beacon, BlobId, Challenge, Commitment, CommitmentId, Hash, Signed, Verdict,
    VerdictId, VerdictOutcome, Workload,
};

use super::verdicts::{check_verdict, VerdictDefect};
use super::Node;
use crate::audit_plan;
use crate::dispatch::AuditRequest;
use crate::model::{TaskRecord, TaskState, VerdictSummary};

/// Longest wait between two draws when no verifier answers.
const MAX_REDRAW_WAIT: Duration = Duration::from_secs(30);

/// Draws in a row in which no verifier answered before an attempt whose verifiers are gone
/// (silent or liars) is re-planned for the ones that are left.
const REPLAN_AFTER: u32 = 3;

/// The slash reason of a worker that withheld a file of its committed result: as costly as a
/// failed audit, or withholding would be the cheaper way to be caught.
pub(super) const WITHHELD: &str = "withheld a file of its committed result";

/// How the verdicts on an attempt came out.
enum Collected {
    /// Enough verifiers passed it, under this plan (re-planned if verifiers went away).
    Accepted(Vec<Signed<Verdict>>, audit_plan::AuditPlan),
    /// The node's re-execution confirmed a failure: the kept verdicts and the ruling.
    Failed(Vec<Signed<Verdict>>, Ruling),
    /// The worker did not produce a file a challenge opens: the result cannot be audited.
    Withheld(crate::dispatch::Withheld),
}

/// What the node's own re-execution found about the failing verdicts of an attempt.
struct Ruling {
    /// Failing verdicts the re-execution confirmed (the worker's result is wrong).
    catchers: Vec<Signed<Verdict>>,
    /// Failing verdicts it contradicted (their verifiers lied).
    liars: Vec<Signed<Verdict>>,
    /// Confirmed: the failure is of the commitment as a whole (checks 2-4, which every audit
    /// makes), or these sampled segments do not reproduce.
    whole: bool,
    segments: BTreeSet<u32>,
}

impl Node {
    /// Records `worker`'s commitment for attempt `n` (the ledger's `commit` entry, with the
    /// beacon's VRF proof) and audits it until it is accepted and paid, or found wrong.
    pub(super) async fn audit_and_settle(
        &self,
        mut t: TaskRecord,
        n: usize,
        worker: AccountId,
        commitment: Signed<Commitment>,
        dir: PathBuf,
    ) -> anyhow::Result<()> {
        let id = t.id;
        // The beacon exists only once the commitment is fixed: the operator's VRF output over
        // the commitment id, which the worker cannot compute and the operator cannot choose.
        // The key names the worker: after a restart the attempt may go to another worker,
        // whose commitment is a new entry rather than a conflict with the first one's.
        let (kind, beacon) = EntryKind::commit_of(&self.operator, commitment.clone())?;
        let EntryKind::Commit { beacon_proof, .. } = &kind else {
            anyhow::bail!("not a commit entry");
        };
        let beacon_proof = *beacon_proof;
        let record = self
            .append(
                super::Operation::Commit {
                    task: id,
                    attempt: n,
                    worker,
                },
                kind,
            )
            .await?;
        t.attempts[n].commitment_id = Some(CommitmentId(commitment.id()?));
        t.attempts[n].commit_seq = Some(record.seq());
        t.attempts[n].steps = Some(commitment.body.steps);
        t.attempts[n].loss_trace = commitment
            .body
            .loss_trace
            .iter()
            .map(|b| Some(f32::from_bits(b.0)).filter(|l| l.is_finite()))
            .collect();
        if !t.ledger_seqs.contains(&record.seq()) {
            t.ledger_seqs.push(record.seq());
        }
        t.state = TaskState::Auditing { worker };
        self.save(&t)?;
        self.audit_attempt(t, n, worker, commitment, dir, beacon, beacon_proof)
            .await
    }

    /// Resumes the audit of a recorded commitment (after a restart or an error): the commitment
    /// and the beacon proof come from the ledger's `commit` entry.
    pub(super) async fn resume_audit(&self, t: TaskRecord, n: usize) -> anyhow::Result<()> {
        let seq = t.attempts[n]
            .commit_seq
            .ok_or_else(|| anyhow::anyhow!("attempt {n} has no recorded commitment"))?;
        let entry = self
            .ledger
            .entry(seq)?
            .ok_or_else(|| anyhow::anyhow!("no ledger entry {seq}"))?;
        let EntryKind::Commit {
            beacon_proof,
            commitment,
            worker,
            ..
        } = entry.body.kind
        else {
            anyhow::bail!("ledger entry {seq} is not a commitment");
        };
        let cid = CommitmentId(commitment.id()?);
        let beacon =
            market_protocol::beacon::verify_beacon(&self.operator.account(), &cid, &beacon_proof)?;
        let dir = self.bundles.join(format!("{}-{n}", t.id));
        tracing::info!(task = %t.id, attempt = n, "resuming the audit of a recorded commitment");
        self.audit_attempt(t, n, worker, commitment, dir, beacon, beacon_proof)
            .await
    }

    /// Audits attempt `n` once its commitment is recorded: waits for a verifier if there is
    /// none, fixes the attempt's plan (how many verifiers, each sampling how much), then
    /// collects verdicts while ringers, if any, are planted at the same time.
    #[allow(clippy::too_many_arguments)]
    async fn audit_attempt(
        &self,
        mut t: TaskRecord,
        n: usize,
        worker: AccountId,
        commitment: Signed<Commitment>,
        dir: PathBuf,
        beacon: Beacon,
        beacon_proof: VrfProof,
    ) -> anyhow::Result<()> {
        if let Err(e) = self.place_start(&t, &dir).await {
            tracing::warn!(task = %t.id, error = %e, "checkpoint 0 will come from the worker");
        }
        let profile = t.spec.body.profile;
        let only_worker = BTreeSet::from([worker]);
        let mut wait = Duration::from_secs(1);
        let (plan, pool) = loop {
            let pool = self.draw_verifiers(&beacon, 0, &only_worker, profile, &t.needs);
            if let Some(p) = &t.attempts[n].plan {
                break (p.clone(), pool);
            }
            if pool.is_empty() {
                tracing::info!(task = %t.id, "no verifier for the commitment yet; waiting");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_REDRAW_WAIT);
                continue;
            }
            // Fewer verifiers for a reputable worker, or when fewer are there; each then samples
            // more, so the buyer's target holds either way.
            // Never more than the task was priced for when it was posted.
            let v = self
                .verifiers_for(&worker)
                .min(pool.len())
                .min(t.plan.verifiers as usize)
                .max(1) as u64;
            let p = audit_plan::plan_for(&t.spec.body, u64::from(commitment.body.segments), v)?;
            t.attempts[n].plan = Some(p.clone());
            self.save(&t)?;
            break (p, pool);
        };
        // The drawn verifiers' openings, fetched now, while the worker that has just committed
        // is surely there: later fetches are only for verifiers standing in for silent ones.
        let policy = market_verifier::SamplePolicy::Plan {
            verifiers: plan.verifiers as u32,
        };
        let (samples, _) =
            market_verifier::audit::sample_count(&t.spec.body, commitment.body.segments, &policy)?;
        let mut openings: Vec<String> = Vec::new();
        for v in pool.iter().take(plan.verifiers as usize) {
            let challenge =
                market_verifier::audit::challenge_for(*v, &commitment, beacon, samples)?;
            for o in market_verifier::audit::openings(&t.spec.body, &challenge.sampled) {
                if !openings.contains(&o) {
                    openings.push(o);
                }
            }
        }
        if let Err(e) = self.fetch_files(&dir, Some(openings)).await {
            let withheld = e.downcast::<crate::dispatch::Withheld>()?;
            return self.withheld(t, n, worker, &commitment, &withheld).await;
        }
        // Ringers go out with the real audits, not after them, so their timing tells nothing.
        let (planted, collected) = tokio::join!(
            self.plant_ringers(&t, n, &dir, &beacon, &plan, &pool),
            self.collect_verdicts(
                &t,
                n,
                worker,
                &commitment,
                &dir,
                beacon,
                beacon_proof,
                &plan
            ),
        );
        if let Err(e) = planted {
            // A ringer that went wrong never costs the real result its finished audit.
            tracing::warn!(task = %t.id, error = %e, "planting ringers failed");
        }
        match collected? {
            Collected::Accepted(kept, plan) => {
                t.attempts[n].plan = Some(plan);
                self.accept(t, n, commitment, dir, kept).await
            }
            Collected::Failed(kept, ruling) => {
                self.result_failed(t, n, worker, &kept, ruling).await
            }
            Collected::Withheld(withheld) => {
                self.withheld(t, n, worker, &commitment, &withheld).await
            }
        }
    }

    /// The worker did not serve a file of its committed result: slashed as for a failed audit,
    /// with the commitment as evidence, and the task goes back to the queue.
    async fn withheld(
        &self,
        t: TaskRecord,
        n: usize,
        worker: AccountId,
        commitment: &Signed<Commitment>,
        withheld: &crate::dispatch::Withheld,
    ) -> anyhow::Result<()> {
        tracing::warn!(task = %t.id, %worker, %withheld, "an opening was withheld");
        let evidence = CommitmentId(commitment.id()?).0;
        self.unusable_result(t, n, worker, evidence, WITHHELD, "withheld")
            .await
    }

    /// Draws verifiers and collects verdicts until `plan.verifiers` of them pass, or the
    /// node's re-execution confirms a failure.
    #[allow(clippy::too_many_arguments)]
    async fn collect_verdicts(
        &self,
        t: &TaskRecord,
        n: usize,
        worker: AccountId,
        commitment: &Signed<Commitment>,
        dir: &Path,
        beacon: Beacon,
        beacon_proof: VrfProof,
        plan: &audit_plan::AuditPlan,
    ) -> anyhow::Result<Collected> {
        let id = t.id;
        let cid = CommitmentId(commitment.id()?);
        let profile = t.spec.body.profile;
        let mut plan = plan.clone();
        let mut kept: Vec<Signed<Verdict>> = Vec::new();
        // The worker never audits itself; a verifier whose verdict was kept or that lied is
        // not asked again. A silent one may be, in a later round.
        let mut settled_with: BTreeSet<AccountId> = BTreeSet::from([worker]);
        let (mut liars, mut silent_now) = (BTreeSet::new(), BTreeSet::new());
        let mut wait = Duration::from_secs(1);
        let mut empty_rounds = 0;
        for round in 0u32.. {
            let pool = self.draw_verifiers(&beacon, round, &settled_with, profile, &t.needs);
            let wanted = plan.verifiers as usize;
            let request = AuditRequest {
                beacon,
                beacon_proof,
                verifiers: plan.verifiers as u32,
                rerun_estimate: audit_work_estimate(t, n, &plan, &self.blobs),
            };
            // Sized exactly as the verifier sizes it (`AuditRequest::policy`).
            let (samples, _) = market_verifier::audit::sample_count(
                &t.spec.body,
                commitment.body.segments,
                &request.policy(),
            )?;
            let mut answered = false;
            for v in pool {
                if kept.len() >= wanted {
                    break;
                }
                let challenge =
                    market_verifier::audit::challenge_for(v, commitment, beacon, samples)?;
                // The node holds only what is read: this challenge's openings come from the
                // worker now. One it cannot produce leaves its result unauditable.
                let openings = market_verifier::audit::openings(&t.spec.body, &challenge.sampled);
                if let Err(e) = self.fetch_files(dir, Some(openings)).await {
                    match e.downcast::<crate::dispatch::Withheld>() {
                        Ok(withheld) => return Ok(Collected::Withheld(withheld)),
                        Err(e) => return Err(e),
                    }
                }
                match self
                    .verdict_of(t, worker, &v, dir, &request, &challenge)
                    .await
                {
                    Ok(verdict) => match check_verdict(&verdict, &v, &cid, &challenge) {
                        Ok(()) => {
                            answered = true;
                            settled_with.insert(v);
                            kept.push(verdict);
                        }
                        Err(VerdictDefect::Lie(why)) => {
                            answered = true;
                            settled_with.insert(v);
                            liars.insert(v);
                            tracing::warn!(verifier = %v, %why, "verdict does not answer its challenge: slashed");
                            let evidence = verdict.id()?;
                            self.slash(
                                t,
                                n,
                                &v,
                                self.config.verifier_slash,
                                evidence,
                                Some(&verdict),
                                "verdict does not answer its challenge",
                                &[],
                            )
                            .await?;
                            self.store.update_participant(
                                &format!("{}:{n}:slash:{evidence}", t.id),
                                &v,
                                |p| p.slashed += 1,
                            )?;
                        }
                        Err(VerdictDefect::Unattributable(why)) => {
                            silent_now.insert(v);
                            self.silent(t, n, round, &v, &challenge, &why).await?;
                        }
                    },
                    Err(e) => {
                        silent_now.insert(v);
                        self.silent(t, n, round, &v, &challenge, &e.to_string())
                            .await?;
                    }
                }
            }
            if kept.iter().any(|v| v.body.outcome != VerdictOutcome::Pass) {
                let ruling = self.referee(dir, &kept).await?;
                for liar in &ruling.liars {
                    liars.insert(liar.body.verifier);
                    self.slash_verifier(
                        t,
                        n,
                        liar,
                        "failure contradicted by the referee's re-execution",
                    )
                    .await?;
                }
                if !ruling.catchers.is_empty() {
                    return Ok(Collected::Failed(kept, ruling));
                }
                // Every failure was a lie: their verifiers are replaced by others.
                kept.retain(|v| v.body.outcome == VerdictOutcome::Pass);
            }
            if kept.len() >= wanted {
                break;
            }
            if answered {
                empty_rounds = 0;
                continue;
            }
            empty_rounds += 1;
            // Verifiers went away (silent, or excluded as liars) and fewer than the plan's are
            // left: re-plan for those, each sampling more so the buyer's target still holds,
            // and audit afresh (verdicts kept so far were sized for more verifiers).
            let gone: BTreeSet<AccountId> = liars
                .iter()
                .chain(&silent_now)
                .copied()
                .chain([worker])
                .collect();
            let left = self
                .draw_verifiers(&beacon, 0, &gone, profile, &t.needs)
                .len();
            if empty_rounds >= REPLAN_AFTER && left >= 1 && left < wanted {
                plan = audit_plan::plan_for(
                    &t.spec.body,
                    u64::from(commitment.body.segments),
                    left as u64,
                )?;
                tracing::warn!(task = %id, verifiers = left, samples = plan.samples, "too few verifiers answer: re-planned");
                kept.clear();
                settled_with = liars.iter().copied().chain([worker]).collect();
                silent_now.clear();
                (empty_rounds, wait) = (0, Duration::from_secs(1));
                continue;
            }
            // Nobody (new) answered: wait before drawing again, longer each time, but never
            // give up on the worker's finished result.
            tracing::info!(task = %id, have = kept.len(), wanted, "waiting for verifiers");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_REDRAW_WAIT);
        }
        Ok(Collected::Accepted(kept, plan))
    }

    /// Asks `v` for a verdict; a mismatch not yet narrowed to a step makes the worker open that
    /// segment's steps and the verifier look again, so the evidence names the first bad step
    /// (only for a verdict that answers its challenge: a liar does not get to make the worker
    /// work).
    async fn verdict_of(
        &self,
        t: &TaskRecord,
        worker: AccountId,
        v: &AccountId,
        dir: &Path,
        request: &AuditRequest,
        challenge: &Challenge,
    ) -> anyhow::Result<Signed<Verdict>> {
        let verdict = self.request_audit(v, dir, request).await?;
        if check_verdict(&verdict, v, &challenge.commitment_id, challenge).is_err() {
            return Ok(verdict);
        }
        let VerdictOutcome::Fail {
            segment,
            step: None,
            reason: market_protocol::FailureReason::StateMismatch,
            ..
        } = verdict.body.outcome
        else {
            return Ok(verdict);
        };
        if !matches!(t.spec.body.workload, Workload::Training(_)) {
            return Ok(verdict);
        }
        let (dispatch, d, blobs) = (self.dispatch.clone(), dir.to_owned(), self.blobs.clone());
        let opened =
            tokio::task::spawn_blocking(move || dispatch.open_steps(&worker, &d, segment, &blobs))
                .await?;
        match opened {
            Ok(()) => self.request_audit(v, dir, request).await,
            Err(e) => {
                tracing::info!(%worker, error = %e, "worker did not open per-step states");
                Ok(verdict)
            }
        }
    }

    /// Writes checkpoint 0 of a training result into `dir` from what the node holds, so no
    /// audit fetches it from the worker: a slot-round's start state (a blob the node made), or
    /// a run's initial state (which the node computes from the task). Only bytes that hash to
    /// the committed leaf 0 are placed, so they are exactly what the worker would serve.
    async fn place_start(&self, t: &TaskRecord, dir: &Path) -> anyhow::Result<()> {
        if !matches!(t.spec.body.workload, Workload::Training(_)) {
            return Ok(());
        }
        let bundle = market_compute::bundle::Bundle::at(dir);
        let path = bundle.checkpoint_path(0);
        // A start held in part: the worker that ran it kept it whole.
        let in_part = t
            .slot()
            .is_some_and(|s| self.blobs.partial().meta(&BlobId(s.start.0)).is_some());
        if path.exists() || in_part {
            return Ok(());
        }
        let leaf0 = *bundle
            .read_leaves()?
            .first()
            .ok_or_else(|| anyhow::anyhow!("no committed leaves"))?;
        let (spec, blobs, start) = (
            t.spec.body.clone(),
            self.blobs.clone(),
            t.slot().map(|s| s.start),
        );
        tokio::task::spawn_blocking(move || {
            let bytes = match start {
                Some(start) => blobs
                    .read(&market_protocol::BlobId(start.0))
                    .ok_or_else(|| anyhow::anyhow!("the start state {start} is not held"))?,
                None => {
                    let job = market_compute::TrainingJob::from_spec(&spec, &blobs)?;
                    job.initial_state().to_bytes(&job.layout)?
                }
            };
            anyhow::ensure!(
                market_protocol::StateHash(Hash::of(&bytes)) == leaf0,
                "leaf 0 is not the start the node holds"
            );
            bundle.write(&path, &bytes)?;
            Ok(())
        })
        .await?
    }

    /// [`crate::dispatch::Dispatch::fetch_files`] on a blocking thread.
    pub(super) async fn fetch_files(
        &self,
        dir: &Path,
        paths: Option<Vec<String>>,
    ) -> anyhow::Result<u64> {
        let (dispatch, d) = (self.dispatch.clone(), dir.to_owned());
        tokio::task::spawn_blocking(move || dispatch.fetch_files(&d, paths.as_deref())).await?
    }

    /// Asks verifier `v` to audit the bundle in `dir`, on a blocking thread.
    pub(super) async fn request_audit(
        &self,
        v: &AccountId,
        dir: &Path,
        request: &AuditRequest,
    ) -> anyhow::Result<Signed<Verdict>> {
        let slot = super::lock(&self.audit_slots)
            .entry(*v)
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(1)))
            .clone();
        let turn = slot.clone().acquire_owned().await?;
        let (dispatch, account, d, r, blobs) = (
            self.dispatch.clone(),
            *v,
            dir.to_owned(),
            *request,
            self.blobs.clone(),
        );
        let verdict =
            tokio::task::spawn_blocking(move || dispatch.audit(&account, &d, &r, &blobs)).await;
        drop((turn, slot));
        // Nobody else waiting for this verifier: forget its slot (verifiers come and go).
        let mut slots = super::lock(&self.audit_slots);
        if slots
            .get(v)
            .is_some_and(|s| std::sync::Arc::strong_count(s) == 1)
        {
            slots.remove(v);
        }
        drop(slots);
        verdict?
    }

    /// A verifier that did not answer (unreachable, past its time, broken, or a verdict not
    /// signed by it): nothing is concluded about the worker; the verifier loses stake and a
    /// point of reputation, so silence never pays. Once per attempt, however often it is asked
    /// again, and paid to the worker whose pay it delays, never to the buyer (who could
    /// otherwise profit from an audit it made hard to finish).
    async fn silent(
        &self,
        t: &TaskRecord,
        n: usize,
        round: u32,
        v: &AccountId,
        challenge: &Challenge,
        why: &str,
    ) -> anyhow::Result<()> {
        tracing::warn!(verifier = %v, round, error = %why, "verifier gave no verdict; drawing another");
        let evidence = Hash(*market_protocol::message_id(challenge)?.as_bytes());
        let worker = t.attempts[n].worker;
        self.slash_tagged(
            t,
            n,
            v,
            self.config.silence_slash,
            evidence,
            None,
            "gave no verdict on its challenge in time",
            &[],
            &worker,
            "silent",
        )
        .await?;
        self.reputation(&format!("silent:{}:{n}:{v}", t.id), v, -1)
            .await
    }

    /// Re-executes, itself, what the failing verdicts claim: first the checks of the
    /// commitment as a whole, then each failing verdict's segment.
    async fn referee(&self, dir: &Path, kept: &[Signed<Verdict>]) -> anyhow::Result<Ruling> {
        let recheck = |segments: Vec<u32>| {
            let (blobs, d) = (self.blobs.clone(), dir.to_owned());
            tokio::task::spawn_blocking(move || {
                market_verifier::recheck_segments(
                    &market_compute::bundle::Bundle::at(&d),
                    &segments,
                    &blobs,
                )
            })
        };
        // The openings of every claimed segment (normally here since its verifier's audit).
        let claimed: Vec<u32> = kept
            .iter()
            .filter_map(|v| match v.body.outcome {
                VerdictOutcome::Fail { segment, .. } => Some(segment),
                VerdictOutcome::Pass => None,
            })
            .collect();
        if let Ok(task) = market_compute::bundle::Bundle::at(dir).read_task() {
            let openings = market_verifier::audit::openings(&task, &claimed);
            if let Err(e) = self.fetch_files(dir, Some(openings)).await {
                tracing::warn!(error = %e, "the referee could not fetch every opening");
            }
        }
        let mut ruling = Ruling {
            catchers: Vec::new(),
            liars: Vec::new(),
            whole: recheck(Vec::new()).await??.is_some(),
            segments: BTreeSet::new(),
        };
        for v in kept {
            let VerdictOutcome::Fail { segment, .. } = v.body.outcome else {
                continue;
            };
            let confirmed = ruling.whole
                || ruling.segments.contains(&segment)
                || recheck(vec![segment]).await??.is_some();
            if confirmed {
                if !ruling.whole {
                    ruling.segments.insert(segment);
                }
                ruling.catchers.push(v.clone());
            } else {
                ruling.liars.push(v.clone());
            }
        }
        Ok(ruling)
    }

    /// The node's re-execution confirmed that the worker's result is wrong: the worker is
    /// slashed (a fee to each verifier that caught it), and so is every passing verifier whose
    /// own sample held the failure; the task goes back to the queue.
    async fn result_failed(
        &self,
        mut t: TaskRecord,
        n: usize,
        worker: AccountId,
        kept: &[Signed<Verdict>],
        ruling: Ruling,
    ) -> anyhow::Result<()> {
        for v in kept {
            let missed = v.body.outcome == VerdictOutcome::Pass
                && (ruling.whole
                    || v.body
                        .checked
                        .iter()
                        .any(|c| ruling.segments.contains(&c.segment)));
            if missed {
                self.slash_verifier(
                    &t,
                    n,
                    v,
                    "passed a segment the referee's re-execution found wrong",
                )
                .await?;
            }
        }
        let catchers: Vec<AccountId> = ruling.catchers.iter().map(|v| v.body.verifier).collect();
        let evidence = &ruling.catchers[0];
        self.slash(
            &t,
            n,
            &worker,
            self.config.worker_slash,
            evidence.id()?,
            Some(evidence),
            "result failed its audit",
            &catchers,
        )
        .await?;
        let event = format!("{}:{n}:failed", t.id);
        self.store.update_participant(&event, &worker, |p| {
            p.tasks_failed += 1;
            p.slashed += 1;
        })?;
        for v in &catchers {
            self.store.update_participant(&event, v, |p| {
                p.audits += 1;
                p.audits_failed += 1;
            })?;
        }
        record_verdicts(&mut t, n, kept)?;
        self.requeue_failed(t, n, &worker).await
    }

    async fn slash_verifier(
        &self,
        t: &TaskRecord,
        n: usize,
        verdict: &Signed<Verdict>,
        reason: &str,
    ) -> anyhow::Result<()> {
        let v = verdict.body.verifier;
        self.slash(
            t,
            n,
            &v,
            self.config.verifier_slash,
            verdict.id()?,
            Some(verdict),
            reason,
            &[],
        )
        .await?;
        self.store.update_participant(
            &format!("{}:{n}:slash:{}", t.id, verdict.id()?),
            &v,
            |p| p.slashed += 1,
        )?;
        Ok(())
    }
}

/// How long one verifier's sample should take to re-execute: the worker's run time times the
/// share of the segments sampled (zero when the run time is not known).
pub(super) fn rerun_estimate(t: &TaskRecord, n: usize, plan: &audit_plan::AuditPlan) -> Duration {
    let run = Duration::from_millis(t.attempts[n].run_millis.unwrap_or(0));
    let share = plan.samples.min(plan.segments) as f64 / plan.segments.max(1) as f64;
    run.mul_f64(share)
}

/// What one verifier's audit of attempt `n` is expected to cost beyond the fixed timeout: its
/// share of the run plus its setup. Real audits and ringers both use it, so a ringer's
/// deadline cannot tell it apart.
pub(super) fn audit_work_estimate(
    t: &TaskRecord,
    n: usize,
    plan: &audit_plan::AuditPlan,
    blobs: &crate::blobs::BlobStore,
) -> Duration {
    rerun_estimate(t, n, plan) + setup_estimate(&t.spec.body, blobs)
}

/// The slowest a verifier is assumed to tokenize a text dataset, in bytes a second: the
/// slowest text measured goes at about 1.9 MB/s on two cores (BENCHMARKS.md), and a verifier
/// may have one.
const TOKENIZE_BYTES_PER_SEC: u64 = 500_000;

/// Time a verifier spends on a task's inputs before it re-executes anything, and which the
/// sampled share of the worker's run time does not cover: tokenizing a text dataset, which it
/// does whole however few segments it re-runs (zero for other datasets).
pub(super) fn setup_estimate(
    spec: &market_protocol::TaskSpec,
    blobs: &crate::blobs::BlobStore,
) -> Duration {
    let Workload::Training(t) = &spec.workload else {
        return Duration::ZERO;
    };
    let market_protocol::DatasetSource::Text { id, .. } = &t.dataset else {
        return Duration::ZERO;
    };
    let bytes = std::fs::metadata(blobs.path(id)).map_or(0, |m| m.len());
    Duration::from_millis(bytes.saturating_mul(1000) / TOKENIZE_BYTES_PER_SEC)
}

/// Shows the kept verdicts on the attempt.
pub(super) fn record_verdicts(
    t: &mut TaskRecord,
    n: usize,
    kept: &[Signed<Verdict>],
) -> anyhow::Result<()> {
    t.attempts[n].verdicts = kept
        .iter()
        .map(|verdict| {
            let body = &verdict.body;
            Ok(VerdictSummary {
                verifier: body.verifier,
                verdict_id: VerdictId(verdict.id()?),
                passed: body.outcome == VerdictOutcome::Pass,
                checked: body.checked.len(),
                detail: match &body.outcome {
                    VerdictOutcome::Pass => None,
                    VerdictOutcome::Fail { detail, .. } => Some(detail.clone()),
                },
                segments: body.checked.iter().map(|c| c.segment).collect(),
                failed_segment: match &body.outcome {
                    VerdictOutcome::Pass => None,
                    VerdictOutcome::Fail { segment, .. } => Some(*segment),
                },
                failed_step: match &body.outcome {
                    VerdictOutcome::Pass => None,
                    VerdictOutcome::Fail { step, .. } => *step,
                },
                reason: match &body.outcome {
                    VerdictOutcome::Pass => None,
                    VerdictOutcome::Fail { reason, .. } => serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned)),
                },
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::{fixtures::training_task, Identity};

    /// Found by the red team: a task whose sample takes longer to re-execute than the fixed
    /// audit timeout had every honest verifier slashed as silent, round after round. A
    /// verifier now gets time in proportion to its share of the worker's run.
    #[test]
    fn a_verifier_is_given_time_for_its_share_of_the_run() {
        let buyer = Identity::from_test_label("estimate buyer");
        let spec = Signed::sign(training_task(&buyer, 1), &buyer).unwrap();
        let plan = audit_plan::plan_for(&spec.body, 20, 2).unwrap();
        let mut t = TaskRecord {
            id: market_protocol::TaskId(spec.id().unwrap()),
            spec,
            order: 0,
            state: TaskState::Queued,
            plan: plan.clone(),
            verifier_fee: 10,
            attempts: vec![crate::model::Attempt {
                worker: buyer.account(),
                commitment_id: None,
                commit_seq: None,
                steps: None,
                loss_trace: Vec::new(),
                verdicts: Vec::new(),
                accepted: false,
                plan: Some(plan.clone()),
                run_millis: Some(20_000),
                result_failed: false,
                divergence_claim: None,
                excused: false,
            }],
            outputs: Vec::new(),
            ledger_seqs: Vec::new(),
            settlement: None,
            needs: Default::default(),
            pool: None,
        };
        let expected = Duration::from_millis(20_000 * plan.samples / 20);
        let got = rerun_estimate(&t, 0, &plan);
        assert!(
            got.abs_diff(expected) < Duration::from_millis(1),
            "{got:?} {expected:?}"
        );
        assert!(expected > Duration::ZERO);
        t.attempts[0].run_millis = None;
        assert_eq!(rerun_estimate(&t, 0, &plan), Duration::ZERO);
    }

    /// Found by the red team: a verifier tokenizes a whole text dataset however few segments it
    /// re-runs, so a large text on a short run had honest verifiers slashed as silent. The text
    /// adds its tokenizing time at the slowest assumed rate; other datasets add nothing.
    #[test]
    fn a_verifier_is_given_time_to_tokenize_a_text_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = crate::blobs::BlobStore::open(dir.path(), 1 << 30).unwrap();
        let text = blobs.put(&vec![b'a'; 2_000_000]).unwrap();
        let tokenizer = blobs.put(b"GGUF").unwrap();
        let buyer = Identity::from_test_label("setup buyer");
        let mut spec = training_task(&buyer, 1);
        assert_eq!(setup_estimate(&spec, &blobs), Duration::ZERO);
        if let Workload::Training(t) = &mut spec.workload {
            t.dataset = market_protocol::DatasetSource::Text {
                id: text,
                tokenizer,
            };
        }
        let expected = Duration::from_secs(2_000_000 / TOKENIZE_BYTES_PER_SEC);
        assert_eq!(setup_estimate(&spec, &blobs), expected);
        assert_eq!(expected, Duration::from_secs(4));
    }
}
