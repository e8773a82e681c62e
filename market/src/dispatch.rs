//! Work dispatch: the one interface through which the node hands tasks to workers and bundles to
//! verifiers. The network issue adds a libp2p implementation; [`InProcess`] runs the real worker
//! and verifier library code inside the node (tests, and the devnet until the network exists).

use std::path::Path;

use market_compute::bundle::Bundle;
use market_compute::BlobSource;
use market_protocol::{
    AccountId, Beacon, Commitment, ExecutionProfile, Identity, Signed, TaskSpec, Verdict,
};
use market_verifier::SamplePolicy;
use market_worker::{Behavior, Progress};

/// How a verifier behaves (dishonest ones exist to test ringers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifierMode {
    /// Re-executes and reports what it finds.
    Honest,
    /// Signs a pass without checking anything.
    Lazy,
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
    /// How many tasks may run at once (each on its own worker).
    fn concurrent_tasks(&self) -> usize;
    /// Has `worker` run `task` into a bundle in `dir`; returns its signed commitment.
    fn run(
        &self,
        worker: &AccountId,
        task: &TaskSpec,
        dir: &Path,
        blobs: &dyn BlobSource,
        progress: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<Signed<Commitment>>;
    /// Has `verifier` audit the bundle in `dir` against `beacon`.
    fn audit(
        &self,
        verifier: &AccountId,
        dir: &Path,
        beacon: Beacon,
        policy: &SamplePolicy,
        blobs: &dyn BlobSource,
    ) -> anyhow::Result<Signed<Verdict>>;

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

    fn concurrent_tasks(&self) -> usize {
        // The workers share this machine's cores: more at once would only slow each down.
        1
    }

    fn run(
        &self,
        worker: &AccountId,
        task: &TaskSpec,
        dir: &Path,
        blobs: &dyn BlobSource,
        progress: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<Signed<Commitment>> {
        let (identity, behavior) = self
            .workers
            .iter()
            .find(|(i, _)| i.account() == *worker)
            .ok_or_else(|| anyhow::anyhow!("no worker {worker}"))?;
        Ok(
            market_worker::exec(task, identity, *behavior, &Bundle::at(dir), blobs, progress)?
                .commitment,
        )
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
        beacon: Beacon,
        policy: &SamplePolicy,
        blobs: &dyn BlobSource,
    ) -> anyhow::Result<Signed<Verdict>> {
        let (identity, mode) = self
            .verifiers
            .iter()
            .find(|(i, _)| i.account() == *verifier)
            .ok_or_else(|| anyhow::anyhow!("no verifier {verifier}"))?;
        let bundle = Bundle::at(dir);
        match mode {
            VerifierMode::Honest => {
                Ok(market_verifier::audit(&bundle, beacon, policy, identity, blobs)?.verdict)
            }
            VerifierMode::Lazy => {
                // Signs a pass for whatever it was given, checking nothing.
                let commitment = bundle.read_commitment()?;
                let c = &commitment.body;
                let challenge = market_protocol::Challenge::derive(
                    identity.account(),
                    market_protocol::CommitmentId(commitment.id()?),
                    beacon,
                    c.segments,
                    1,
                )?;
                let verdict = Verdict {
                    version: market_protocol::Version::CURRENT,
                    verifier: identity.account(),
                    commitment_id: challenge.commitment_id,
                    challenge_id: market_protocol::ChallengeId(market_protocol::message_id(
                        &challenge,
                    )?),
                    checked: Vec::new(),
                    outcome: market_protocol::VerdictOutcome::Pass,
                    compute_share_ppm: 0,
                };
                Ok(Signed::sign(verdict, identity)?)
            }
        }
    }
}
