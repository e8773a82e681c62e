//! Work dispatch: the one interface through which the node hands tasks to workers and bundles to
//! verifiers. The network issue adds a libp2p implementation; [`InProcess`] runs the real worker
//! and verifier library code inside the node (tests, and the devnet until the network exists).

use std::path::Path;

use market_compute::bundle::Bundle;
use market_compute::BlobSource;
use market_protocol::{
    AccountId, Beacon, Commitment, ExecutionProfile, Identity, Resources, Signed, SlotRound,
    TaskSpec, Verdict,
};
use market_verifier::SamplePolicy;
use market_worker::{Behavior, Progress};

/// How a verifier behaves (dishonest ones exist to test ringers and the referee).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifierMode {
    /// Re-executes and reports what it finds.
    Honest,
    /// Signs a pass without re-executing anything, listing its challenge's segments as if each
    /// had reproduced (a verdict that looks like an honest pass).
    Lazy,
    /// Signs a failure of work it never checked: names a segment (this verifier's first sampled
    /// one) as not reproducing, to get an honest worker slashed.
    Liar,
}

/// What the node asks a verifier to audit against: the beacon with its VRF proof (the verifier
/// checks it under the node's key) and how many verifiers audit the commitment, from which the
/// verifier sizes its own sample with the task's audit policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuditRequest {
    /// The operator's VRF output over the commitment id.
    pub beacon: Beacon,
    /// Its proof.
    pub beacon_proof: market_protocol::vrf::VrfProof,
    /// Verifiers auditing the commitment, each with its own sample.
    pub verifiers: u32,
    /// How long re-executing its sample should take, estimated from the worker's run (its time
    /// times the share of the work sampled): a verifier is given this much on top of the
    /// network's audit timeout before its silence counts, so no task is too long to audit.
    pub rerun_estimate: std::time::Duration,
}

impl AuditRequest {
    /// The sample policy it implies.
    pub fn policy(&self) -> SamplePolicy {
        SamplePolicy::Plan {
            verifiers: self.verifiers,
        }
    }
}

/// Hands out work. Calls block; the node runs them on blocking threads.
pub trait Dispatch: Send + Sync {
    /// Workers that can take tasks.
    fn workers(&self) -> Vec<AccountId>;
    /// Verifiers that can audit.
    fn verifiers(&self) -> Vec<AccountId>;
    /// Whether `participant` (a worker or a verifier) can execute tasks of `profile`: a task
    /// goes only to a worker that runs it, and its audits only to verifiers that do.
    fn runs(&self, participant: &AccountId, profile: ExecutionProfile) -> bool;
    /// The memory and disk `participant` offers (from its latest hello; nothing for one this
    /// dispatcher does not know), or `None` when this dispatcher sets no limit. A task goes
    /// only to a worker that offers what it needs, so a task too big for everyone waits
    /// instead of failing on worker after worker.
    fn offers(&self, participant: &AccountId) -> Option<Resources>;
    /// How many tasks may run at once (each on its own worker).
    fn concurrent_tasks(&self) -> usize;
    /// Has `worker` run `task` (or, for a pooled task, its `slot_round`, from the start state
    /// held in `blobs` under the id `slot_round.start`) into a bundle in `dir`; returns its
    /// signed commitment.
    fn run(
        &self,
        worker: &AccountId,
        task: &TaskSpec,
        slot_round: Option<SlotRound>,
        dir: &Path,
        blobs: &dyn BlobSource,
        progress: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<Signed<Commitment>>;
    /// Has `verifier` audit the bundle in `dir` as `request` says.
    fn audit(
        &self,
        verifier: &AccountId,
        dir: &Path,
        request: &AuditRequest,
        blobs: &dyn BlobSource,
    ) -> anyhow::Result<Signed<Verdict>>;

    /// Makes sure the files `paths` of the result bundle in `dir` are there (every file of it
    /// when `None`), fetching what is missing from the worker that committed it: the node holds
    /// only what it reads (the final state, and the openings of the challenges it hands out).
    /// Returns the bytes fetched. A worker that cannot produce a file its commitment covers
    /// within the grace gets a [`Withheld`] error: its result cannot be audited.
    fn fetch_files(&self, _dir: &Path, _paths: Option<&[String]>) -> anyhow::Result<u64> {
        // Library code writes every file of the bundle into `dir` itself.
        Ok(0)
    }

    /// Fetches what a pooled slot's final state held in part lacks (`meta`, whose origin is
    /// the worker that ran it: [`crate::partial::Origin::Final`]) into `file`, keeping the
    /// chunks already there; returns the bytes fetched. An error when the worker cannot be
    /// reached, or does not serve them, for a while (`P2pOptions::state_wait`): the node then
    /// starts the slot's moments afresh.
    fn fetch_state_rest(
        &self,
        _meta: &crate::partial::PartialMeta,
        _file: &Path,
    ) -> anyhow::Result<u64> {
        anyhow::bail!("this dispatch holds every state whole")
    }

    /// Whether the node refused `worker` a chunk of start `start` (held in part, its chunk
    /// kept by the slot's worker) a moment ago: only then is its report that it lost the
    /// state it kept taken ([`crate::partial`]).
    fn refused_kept_chunk(&self, _worker: &AccountId, _start: &market_protocol::BlobId) -> bool {
        false
    }

    /// Has `worker` open the per-step state hashes of `segment` of the bundle in `dir` (asked
    /// when a verifier found the segment wrong, so its verdict can name the first bad step).
    fn open_steps(
        &self,
        worker: &AccountId,
        dir: &Path,
        segment: u32,
        blobs: &dyn BlobSource,
    ) -> anyhow::Result<()>;
}

/// A file of a committed result that its worker did not produce when the node asked for it.
#[derive(Debug, thiserror::Error)]
#[error("the worker withheld {path} of its committed result: {why}")]
pub struct Withheld {
    /// The bundle path.
    pub path: String,
    /// What went wrong.
    pub why: String,
}

/// Workers and verifiers as library code in this process.
#[derive(Debug, Default)]
pub struct InProcess {
    /// Workers with their behaviour.
    pub workers: Vec<(Identity, Behavior)>,
    /// Verifiers with their behaviour.
    pub verifiers: Vec<(Identity, VerifierMode)>,
}

impl Dispatch for InProcess {
    fn workers(&self) -> Vec<AccountId> {
        self.workers.iter().map(|(i, _)| i.account()).collect()
    }

    fn verifiers(&self) -> Vec<AccountId> {
        self.verifiers.iter().map(|(i, _)| i.account()).collect()
    }

    fn runs(&self, _participant: &AccountId, profile: ExecutionProfile) -> bool {
        // Everyone here is library code on this process's CPU.
        market_compute::backend::profiles_on("cpu").contains(&profile)
    }

    fn offers(&self, _participant: &AccountId) -> Option<Resources> {
        // Library code in the node's own process: the machine that validated the task.
        None
    }

    fn concurrent_tasks(&self) -> usize {
        // The workers share this machine's cores: more at once would only slow each down.
        1
    }

    fn run(
        &self,
        worker: &AccountId,
        task: &TaskSpec,
        slot_round: Option<SlotRound>,
        dir: &Path,
        blobs: &dyn BlobSource,
        progress: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<Signed<Commitment>> {
        let (identity, behavior) = self
            .workers
            .iter()
            .find(|(i, _)| i.account() == *worker)
            .ok_or_else(|| anyhow::anyhow!("no worker {worker}"))?;
        let bundle = Bundle::at(dir);
        let report = match slot_round {
            None => market_worker::exec(task, identity, *behavior, &bundle, blobs, progress)?,
            Some(sr) => market_worker::exec_slot_round_from(
                task,
                sr,
                identity,
                *behavior,
                &bundle,
                blobs,
                &market_worker::CancelToken::default(),
                progress,
            )?,
        };
        Ok(report.commitment)
    }

    fn open_steps(
        &self,
        worker: &AccountId,
        dir: &Path,
        segment: u32,
        blobs: &dyn BlobSource,
    ) -> anyhow::Result<()> {
        let (_, behavior) = self
            .workers
            .iter()
            .find(|(i, _)| i.account() == *worker)
            .ok_or_else(|| anyhow::anyhow!("no worker {worker}"))?;
        let bundle = Bundle::at(dir);
        market_worker::open_steps(&bundle.read_task()?, *behavior, &bundle, blobs, segment)?;
        Ok(())
    }

    fn audit(
        &self,
        verifier: &AccountId,
        dir: &Path,
        request: &AuditRequest,
        blobs: &dyn BlobSource,
    ) -> anyhow::Result<Signed<Verdict>> {
        let (identity, mode) = self
            .verifiers
            .iter()
            .find(|(i, _)| i.account() == *verifier)
            .ok_or_else(|| anyhow::anyhow!("no verifier {verifier}"))?;
        let bundle = Bundle::at(dir);
        let policy = request.policy();
        if *mode == VerifierMode::Honest {
            return Ok(
                market_verifier::audit(&bundle, request.beacon, &policy, identity, blobs)?.verdict,
            );
        }
        // A dishonest verifier still derives its challenge, so its verdict names the right one.
        let task = bundle.read_task()?;
        let commitment = bundle.read_commitment()?;
        let (samples, _) =
            market_verifier::audit::sample_count(&task, commitment.body.segments, &policy)?;
        let challenge = market_verifier::audit::challenge_for(
            identity.account(),
            &commitment,
            request.beacon,
            samples,
        )?;
        let leaves = bundle.read_leaves()?;
        // The committed end of segment `s`: checkpoint `s + 1` (training) or item `s`.
        let training = commitment.body.steps > 0;
        let end_of = |s: u32| {
            let i = if training { s + 1 } else { s };
            leaves.get(i as usize).copied().unwrap_or_default()
        };
        let (checked, outcome) = match mode {
            VerifierMode::Lazy => (
                challenge
                    .sampled
                    .iter()
                    .map(|&s| market_protocol::SegmentCheck {
                        segment: s,
                        expected: end_of(s),
                        actual: Some(end_of(s)),
                    })
                    .collect(),
                market_protocol::VerdictOutcome::Pass,
            ),
            _ => {
                let s = challenge.sampled.first().copied().unwrap_or(0);
                (
                    vec![market_protocol::SegmentCheck {
                        segment: s,
                        expected: end_of(s),
                        actual: Some(market_protocol::StateHash(market_protocol::Hash::of(
                            b"made up",
                        ))),
                    }],
                    market_protocol::VerdictOutcome::Fail {
                        segment: s,
                        step: None,
                        reason: market_protocol::FailureReason::StateMismatch,
                        detail: format!("segment {s} does not reproduce (a lie)"),
                    },
                )
            }
        };
        let verdict = Verdict {
            version: market_protocol::Version::CURRENT,
            verifier: identity.account(),
            commitment_id: challenge.commitment_id,
            challenge_id: market_protocol::ChallengeId(market_protocol::message_id(&challenge)?),
            checked,
            outcome,
            compute_share_ppm: 0,
        };
        Ok(Signed::sign(verdict, identity)?)
    }
}
