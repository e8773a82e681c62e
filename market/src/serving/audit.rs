//! Audits of served answers, batch by batch.
//!
//! Each answer the node takes is escrowed from its buyer at once and goes into its worker's
//! open batch. A batch closes at `serve_batch_answers` answers or `serve_batch_secs` after its
//! first; it is then named by the Merkle root of its leaves (each the message id of a signed
//! [`market_protocol::Answer`]), and only then does the operator draw its beacon (ECVRF over
//! the root, `market_protocol::beacon::prove_batch_beacon`), from which the audited answers are
//! sampled: the worker signed every answer before the draw could be known. Every answer's bill
//! (its prompt tokens) is counted by the node; each sampled answer is checked by a staked
//! verifier drawn from the beacon, by one forward pass against its request (the check a
//! verifier makes of a posted task's item, bit for bit in `repro`), and returned as a signed
//! [`AnswerCheck`]. The node is the referee: it re-checks every failure before the worker is
//! blamed (a contradicted failure slashes the verifier instead), and plants fake answers
//! (ringers) on verifiers so that passing without checking costs them too. A batch whose
//! sampled answers all pass pays each checking verifier its fee and its worker the rest of
//! each answer's cost; a batch with one failure refunds every answer in it to its buyer and
//! slashes the worker (to the buyer of the failing answer). Every step is an idempotent ledger
//! operation, so a batch interrupted by a restart is audited and settled once when the node
//! comes back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use market_compute::inference::AnswerRecord;
use market_compute::serving::ServedModel;
use market_ledger::EntryKind;
use market_net::wire::AnswerCheckJob;
use market_protocol::beacon::prove_batch_beacon;
use market_protocol::sampling::sample_indices;
use market_protocol::{
    AccountId, AnswerCheck, AnswerCheckOutcome, Beacon, BlobId, ChallengeSeed, Credits,
    ExecutionProfile, Hash, Identity, Signed, TaskId, Workload,
};

use crate::auth::unix_now;
use crate::engine::{Node, Operation};
use crate::store::{BatchStatus, ServeBatch};

/// How often open batches are looked at.
pub const TICK: Duration = Duration::from_millis(500);

/// How many of a batch's `n` answers are checked for a share of `ppm` parts per million: the
/// share rounded up, at least one, at most all.
pub fn audited(n: usize, ppm: u32) -> usize {
    let k = (n as u64 * u64::from(ppm)).div_ceil(1_000_000) as usize;
    k.clamp(1, n.max(1)).min(n)
}

/// The chance a batch of `n` answers with `faked` of them faked is caught when `k` are
/// checked: one minus the chance every checked answer is honest (hypergeometric).
pub fn catch_chance(n: usize, faked: usize, k: usize) -> f64 {
    if faked == 0 {
        return 0.0;
    }
    let mut miss = 1.0;
    for i in 0..k.min(n) {
        miss *= (n - faked.min(n)).saturating_sub(i) as f64 / (n - i) as f64;
        if miss == 0.0 {
            break;
        }
    }
    1.0 - miss
}

/// The node's copy of the model `blob` in `profile` for checking: with its weights for the
/// referee's forward pass, or only its header and tokenizer for counting bills (so a node that
/// only counts bills never loads a model).
fn checker(
    node: &Node,
    blob: BlobId,
    profile: ExecutionProfile,
    with_weights: bool,
) -> Result<Arc<ServedModel>, String> {
    node.serving
        .loaded
        .get(
            &node.blobs,
            blob,
            profile,
            with_weights,
            node.operator.account(),
        )
        .map_err(|e| e.to_string())
}

/// Closes the batches that are due and audits every closed batch not yet settled; runs until
/// the node stops.
pub async fn run(node: Arc<Node>) {
    let started = unix_now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        if let Err(e) = once(&node, started).await {
            tracing::error!(error = %e, "auditing served answers");
        }
    }
}

/// One pass: settles the holds of requests an earlier run of the node left in flight (the
/// answer's cost stays escrowed if it was recorded, the rest goes back), closes due batches,
/// then audits and settles every batch still auditing.
pub async fn once(node: &Arc<Node>, started: u64) -> anyhow::Result<()> {
    for receipt in node.store.holds_before(started)? {
        let keep = node.store.served_receipt(&receipt)?.map_or(0, |r| r.cost);
        crate::api::openai::release_unused(node, &receipt, keep).await?;
    }
    let now = unix_now();
    let cfg = &node.config;
    let max = cfg.serve_batch_len();
    for (worker, open) in node.store.open_batches()? {
        // Full batches of `max` (answers that came faster than the tick make several), then
        // what is left once it is old enough.
        let due = now >= open.opened + cfg.serve_batch_secs;
        let mut left = open.answers.len();
        while left >= max || (due && left > 0) {
            if node.store.close_batch(&worker, now, max)?.is_none() {
                break;
            }
            left -= left.min(max);
        }
    }
    // Each batch in a task of its own: a batch waiting on a verifier holds up no other.
    for batch in node.store.batches_auditing()? {
        let root = batch.root;
        if !lock(&node.serving.auditing).insert(root) {
            continue;
        }
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = audit(&node, batch).await {
                tracing::error!(batch = %root, error = %e, "a served batch's audit");
            }
            lock(&node.serving.auditing).remove(&root);
        });
    }
    Ok(())
}

/// Audits one closed batch and settles it.
async fn audit(node: &Arc<Node>, mut batch: ServeBatch) -> anyhow::Result<()> {
    // An answer's escrow holds exactly its cost once the rest of its hold went back; a batch
    // waits until every answer's has (a tick or two), so it pays or refunds only the cost.
    for (answer, _) in &batch.answers {
        if node.store.has_hold(answer)? {
            return Ok(());
        }
    }
    let (beacon, proof) = match batch.beacon {
        Some(b) => b,
        None => {
            let drawn = prove_batch_beacon(&node.operator, &batch.root);
            let n = batch.answers.len() as u32;
            let k = audited(batch.answers.len(), node.config.serve_audit_ppm) as u32;
            batch.sampled = sample_indices(&ChallengeSeed(drawn.0 .0), n, k)?;
            batch.beacon = Some(drawn);
            node.store.save_batch(&batch)?;
            drawn
        }
    };
    let mut receipts = Vec::with_capacity(batch.answers.len());
    for &(answer, _) in &batch.answers {
        let receipt = node
            .store
            .served_receipt(&answer)?
            .ok_or_else(|| anyhow::anyhow!("receipt {answer} is missing"))?;
        receipts.push((answer, receipt));
    }
    let mut failure = None;
    // Every answer's bill is checked, not only the sampled ones: counting a prompt's tokens
    // costs no forward pass, and a worker that signs more than it used would overcharge.
    for (answer, receipt) in &receipts {
        let answer = *answer;
        let signed = receipt.answer.verify()?.prompt_tokens;
        let blob = weights_of(&receipt.request)?;
        let (n, task) = (node.clone(), receipt.request.clone());
        let counted = tokio::task::spawn_blocking(move || {
            let model = checker(&n, blob, task.profile, false)?;
            model.prompt_tokens(&task).map_err(|e| e.to_string())
        })
        .await?
        .map_err(|e| anyhow::anyhow!("counting answer {answer}'s prompt: {e}"))?;
        if signed != counted {
            failure = Some((
                answer,
                receipt.request.buyer,
                format!("it bills {signed} prompt tokens, the prompt has {counted}"),
            ));
            break;
        }
    }
    if failure.is_none() {
        // Passed over for the rest of this pass over the batch (every answer of it): silent,
        // refusing or away.
        let mut skipped: BTreeSet<AccountId> = BTreeSet::new();
        for &i in &batch.sampled.clone() {
            let (answer, receipt) = &receipts[i as usize];
            let leaf = batch.answers[i as usize].1;
            let checked = batch.checks.iter().find(|c| c.body.answer == leaf);
            match checked.map(|c| &c.body.outcome) {
                Some(AnswerCheckOutcome::Pass) => continue,
                // A failure the node confirmed before a restart: settled as it was found.
                Some(AnswerCheckOutcome::Fail { detail }) => {
                    failure = Some((*answer, receipt.request.buyer, detail.clone()));
                    break;
                }
                None => {}
            }
            let checked =
                check_by_verifiers(node, &mut batch, i, &receipts, beacon, proof, &mut skipped);
            match checked.await? {
                Checked::Passed => {}
                Checked::Failed(why) => {
                    failure = Some((*answer, receipt.request.buyer, why));
                    break;
                }
                // Asked again on a later tick, when a verifier is there.
                Checked::Waiting => {
                    node.store.save_batch(&batch)?;
                    return Ok(());
                }
            }
        }
    }
    match failure {
        None => settle_passed(node, &mut batch).await?,
        Some((answer, victim, why)) => {
            settle_failed(node, &mut batch, answer, victim, &why).await?
        }
    }
    node.store.save_batch(&batch)?;
    Ok(())
}

/// How the check of one sampled answer came out.
enum Checked {
    /// A verifier passed it (its check is in the batch).
    Passed,
    /// A verifier failed it and the node's own check agreed (the check is in the batch).
    Failed(String),
    /// No verifier can take it now.
    Waiting,
}

/// Most verifiers asked about one answer in one pass before the batch waits for a later tick.
const MAX_DRAWS_PER_ANSWER: u32 = 8;

/// Has a drawn verifier check answer `index` of `batch`: draws from the batch beacon (staked,
/// reputable verifiers weigh more; the worker and anyone excluded never), asks, and takes its
/// signed check. A verifier that took the job and stayed silent loses a point of reputation
/// (once per batch) and, like one that refused or is away, is passed over (`skipped`) for the
/// rest of this pass over the batch only: it is drawn again on a later tick, so a verifier that was briefly away cannot
/// leave a batch without anyone to check it. A failure is re-checked by the node (the referee)
/// before anyone is blamed: confirmed, it fails the batch; contradicted, the verifier lied: it
/// is slashed and excluded from the batch, and another is drawn. A pass counts unless the
/// ringer sent with it ([`ringer_job`]) shows the verifier passes fakes or ignores them, or the
/// node's own re-check of it (at `serve_recheck_ppm`) finds the answer wrong: a verifier caught
/// either way is slashed and excluded, and every pass it gave in the batch is void.
async fn check_by_verifiers(
    node: &Arc<Node>,
    batch: &mut ServeBatch,
    index: u32,
    receipts: &[(TaskId, crate::store::ServedReceipt)],
    beacon: Beacon,
    beacon_proof: market_protocol::vrf::VrfProof,
    skipped: &mut BTreeSet<AccountId>,
) -> anyhow::Result<Checked> {
    let Some(link) = node.serving.link() else {
        return Ok(Checked::Waiting);
    };
    let receipt = &receipts[index as usize].1;
    let leaf = batch.answers[index as usize].1;
    let leaves: Vec<[u8; 32]> = batch.answers.iter().map(|(_, l)| l.0).collect();
    let path = market_protocol::MerkleTree::new(&leaves)
        .proof(u64::from(index))
        .ok_or_else(|| anyhow::anyhow!("answer {index} is not in its batch"))?
        .path;
    let job = AnswerCheckJob {
        job: 0,
        batch: batch.root,
        worker: batch.worker,
        answers: batch.answers.len() as u32,
        sampled: batch.sampled.len() as u32,
        beacon,
        beacon_proof,
        index,
        proof: path,
        request: receipt.request.clone(),
        answer: receipt.answer.clone(),
        record: receipt.record.clone(),
    };
    for _ in 0..MAX_DRAWS_PER_ANSWER {
        let mut exclude: BTreeSet<AccountId> = batch.excluded.iter().copied().collect();
        exclude.extend(skipped.iter().copied());
        exclude.insert(batch.worker);
        let pool = node.draw_verifiers(
            &beacon,
            batch.draws,
            &exclude,
            receipt.request.profile,
            &Default::default(),
        );
        let Some(&verifier) = pool.first() else {
            return Ok(Checked::Waiting);
        };
        let draw = batch.draws;
        batch.draws += 1;
        node.store.save_batch(batch)?;
        let ringer = ringer_job(node, batch, index, draw, receipts, verifier);
        // A verifier running a ringer beside the real check gets the time of both.
        let tokens = check_tokens(receipt) + ringer.as_ref().map_or(0, |r| r.tokens);
        let timeout = check_timeout(node, tokens);
        let real = link.check_answer(verifier, job.clone(), timeout);
        let (asked, rung) = match &ringer {
            Some(r) => {
                let fake = link.check_answer(verifier, r.job.clone(), timeout);
                // Either may be sent first.
                let (a, f) = if rand_bit() {
                    tokio::join!(real, fake)
                } else {
                    let (f, a) = tokio::join!(fake, real);
                    (a, f)
                };
                (a, Some(f))
            }
            None => (real.await, None),
        };
        if let (Some(r), Some(rung)) = (&ringer, &rung) {
            match rung {
                Ok(check) if r.passed_by(check, verifier) => {
                    tracing::warn!(%verifier, batch = %batch.root, "a verifier passed a served ringer: slashed, its passes void");
                    let to = node.operator.account();
                    slash_verifier(node, check, to, "passed a planted fake answer (ringer)")
                        .await?;
                    return void_passes(node, batch, verifier).await;
                }
                Ok(_) => {}
                // Ignoring the ringer must cost as much as ignoring real work, or a verifier
                // that can tell them apart would check neither.
                Err(e) => {
                    tracing::info!(%verifier, batch = %batch.root, error = %e, "no check of a ringer: its pass is not taken");
                    silent(node, batch, verifier, e).await?;
                    skipped.insert(verifier);
                    continue;
                }
            }
        }
        let check = match asked {
            Ok(c)
                if c.body.verifier == verifier
                    && c.body.batch == batch.root
                    && c.body.index == index
                    && c.body.answer == leaf =>
            {
                c
            }
            Ok(_) => {
                tracing::warn!(%verifier, batch = %batch.root, "a check of another answer: excluded");
                batch.excluded.push(verifier);
                node.store.save_batch(batch)?;
                continue;
            }
            Err(e) => {
                tracing::info!(%verifier, batch = %batch.root, error = %e, "no check; drawing another verifier");
                silent(node, batch, verifier, &e).await?;
                skipped.insert(verifier);
                continue;
            }
        };
        match &check.body.outcome {
            AnswerCheckOutcome::Pass => {
                // Only in `repro`: a `native` answer near the tolerance may pass on the
                // verifier's machine and fail on the node's, and an honest pass is no lie.
                let exact = receipt.request.profile == ExecutionProfile::Repro;
                if exact && recheck_due(node, &batch.root, index, draw) {
                    if let Err(why) = node_check(node, receipt).await? {
                        tracing::warn!(%verifier, batch = %batch.root, %why, "a verifier passed a wrong answer: slashed, its passes void");
                        // To the buyer it would have cheated, never to the cheating worker.
                        slash_verifier(
                            node,
                            &check,
                            receipt.request.buyer,
                            "passed a served answer that the node's check fails",
                        )
                        .await?;
                        return void_passes(node, batch, verifier).await;
                    }
                }
                batch.checks.push(check);
                node.store.save_batch(batch)?;
                return Ok(Checked::Passed);
            }
            AnswerCheckOutcome::Fail { detail } => match node_check(node, receipt).await? {
                Err(why) => {
                    tracing::info!(%verifier, batch = %batch.root, %detail, "the referee confirms a failed answer");
                    batch.checks.push(check);
                    node.store.save_batch(batch)?;
                    return Ok(Checked::Failed(why));
                }
                Ok(()) => {
                    tracing::warn!(%verifier, batch = %batch.root, %detail, "a verifier failed an answer the referee passes: slashed");
                    slash_verifier(
                        node,
                        &check,
                        batch.worker,
                        "failed a served answer that the node's check passes",
                    )
                    .await?;
                    batch.excluded.push(verifier);
                    node.store.save_batch(batch)?;
                }
            },
        }
    }
    Ok(Checked::Waiting)
}

/// A fair coin from the operating system.
fn rand_bit() -> bool {
    let mut b = [0u8; 1];
    getrandom::fill(&mut b).is_ok() && b[0] & 1 == 1
}

/// A verifier caught passing what it should not: excluded from the batch, and every pass it
/// gave there void (those answers are checked again by others on the next pass).
async fn void_passes(
    node: &Arc<Node>,
    batch: &mut ServeBatch,
    verifier: AccountId,
) -> anyhow::Result<Checked> {
    batch.excluded.push(verifier);
    batch.checks.retain(|c| c.body.verifier != verifier);
    node.store.save_batch(batch)?;
    Ok(Checked::Waiting)
}

/// A verifier that took a check (or its ringer) and sent nothing in time loses a point of
/// reputation, once per batch; one that refused or is away, nothing.
async fn silent(
    node: &Arc<Node>,
    batch: &ServeBatch,
    verifier: AccountId,
    e: &anyhow::Error,
) -> anyhow::Result<()> {
    if !e.is::<crate::serving::SilentVerifier>() {
        return Ok(());
    }
    let event = format!("serve_silent:{}", batch.root);
    node.append(
        Operation::Reputation {
            event: &event,
            account: verifier,
        },
        EntryKind::Reputation {
            account: verifier,
            delta: -1,
        },
    )
    .await?;
    Ok(())
}

/// The tokens a check of `receipt`'s answer runs the model over.
fn check_tokens(receipt: &crate::store::ServedReceipt) -> u64 {
    let a = &receipt.answer.body;
    u64::from(a.prompt_tokens) + u64::from(a.completion_tokens)
}

/// How long a verifier has for checks over `tokens` tokens: the network's audit timeout plus
/// `serve_check_ms_per_token` for each.
fn check_timeout(node: &Node, tokens: u64) -> Duration {
    Duration::from_secs(node.config.network.audit_timeout_secs)
        + Duration::from_millis(tokens.saturating_mul(node.config.serve_check_ms_per_token))
}

/// `blake3 derive_key(purpose, operator secret || parts...)`: the node's private draws and keys,
/// which no one without the operator's key can predict.
fn secret_hash(operator: &Identity, purpose: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(purpose);
    h.update(&operator.secret_bytes());
    for part in parts {
        h.update(part);
    }
    *h.finalize().as_bytes()
}

/// The little-endian u64 at byte `at` of `bytes`.
fn word(bytes: &[u8; 32], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// Whether the node re-checks a verifier's pass of answer `index` of `batch` at draw `draw`
/// itself: a draw of `serve_recheck_ppm` keyed by the operator's secret.
fn recheck_due(node: &Node, batch: &Hash, index: u32, draw: u32) -> bool {
    let h = secret_hash(
        &node.operator,
        "market v1 served recheck draw",
        &[batch.as_bytes(), &index.to_le_bytes(), &draw.to_le_bytes()],
    );
    word(&h, 0) % 1_000_000 < u64::from(node.config.serve_recheck_ppm)
}

/// The node's own check of a served answer (the referee's): `Ok(Err(why))` if it is wrong.
/// A request the node's code cannot run is an error, never the worker's fault.
async fn node_check(
    node: &Arc<Node>,
    receipt: &crate::store::ServedReceipt,
) -> anyhow::Result<Result<(), String>> {
    let blob = weights_of(&receipt.request)?;
    let (n, task, record) = (
        node.clone(),
        receipt.request.clone(),
        receipt.record.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let model = checker(&n, blob, task.profile, true)?;
        model
            .check(&task, record.as_bytes())
            .map_err(|e| format!("the request cannot be run: {e}"))
    })
    .await?
    .map_err(|e| anyhow::anyhow!("checking a served answer: {e}"))
}

/// Takes `verifier_slash` (at most the stake) from the verifier of `check`, paid to `to`, with
/// the check's message id as evidence, and lowers its reputation.
async fn slash_verifier(
    node: &Arc<Node>,
    check: &Signed<AnswerCheck>,
    to: AccountId,
    reason: &str,
) -> anyhow::Result<()> {
    let verifier = check.body.verifier;
    let id = check.id()?;
    let amount = node
        .config
        .verifier_slash
        .min(node.ledger.stake(&verifier).0);
    if amount > 0 {
        let appended = node
            .append(
                Operation::ServeVerifierSlash { check: id },
                EntryKind::Slash {
                    account: verifier,
                    amount: Credits(amount),
                    evidence: id,
                    reason: format!("{reason} (check {id})"),
                    to,
                    verdict: None,
                },
            )
            .await;
        if let Err(e) = appended {
            tracing::warn!(error = %e, "a verifier's slash");
        }
    }
    let event = format!("serve_check:{id}");
    node.append(
        Operation::Reputation {
            event: &event,
            account: verifier,
        },
        EntryKind::Reputation {
            account: verifier,
            delta: -5,
        },
    )
    .await?;
    Ok(())
}

/// The key that signs a served ringer: derived from the operator's secret, the batch, the
/// answer, the draw and the verifier, so every ringer (a retry's too) has a signer of its own
/// that no one else can derive.
fn serve_ringer_key(
    operator: &Identity,
    batch: &Hash,
    index: u32,
    draw: u32,
    verifier: &AccountId,
) -> Identity {
    Identity::from_secret_bytes(secret_hash(
        operator,
        "market v1 served ringer key",
        &[
            batch.as_bytes(),
            &index.to_le_bytes(),
            &draw.to_le_bytes(),
            verifier.as_bytes(),
        ],
    ))
}

/// The draw deciding whether a ringer goes with the check of answer `index` of `batch`, and
/// which answer it is made from: a stream keyed by the operator's secret, so nothing a
/// verifier is sent predicts it. `None` when no ringer goes.
fn ringer_draw(node: &Node, batch: &Hash, index: u32) -> Option<u64> {
    let rate = node.config.serve_ringer_ppm;
    if rate == 0 {
        return None;
    }
    let h = secret_hash(
        &node.operator,
        "market v1 served ringer draw",
        &[batch.as_bytes(), &index.to_le_bytes()],
    );
    (word(&h, 0) % 1_000_000 < u64::from(rate)).then(|| word(&h, 8))
}

/// The fake of a ringer: a real record with its first logit moved by `1 + |logit| / 8`, far
/// beyond any profile's tolerance (`native` accepts `1e-4 × (1 + |logit|)`). Every field reads
/// as an answer should (the tokens and text are the real ones), the signature and proofs check
/// out, and only a forward pass shows that the model does not give that logit.
pub fn ringer_record(record: &str) -> Option<String> {
    let mut r = AnswerRecord::from_bytes(record.as_bytes()).ok()?;
    let first = r.logits.first_mut()?;
    let logit = f32::from_bits(*first);
    let moved = logit + 1.0 + logit.abs() / 8.0;
    if !logit.is_finite() || !moved.is_finite() {
        return None;
    }
    *first = moved.to_bits();
    String::from_utf8(r.to_bytes()).ok()
}

/// A ringer on its way: the job, and what a pass of it names.
struct Ringer {
    job: AnswerCheckJob,
    root: Hash,
    leaf: Hash,
    /// The tokens its check runs over.
    tokens: u64,
}

impl Ringer {
    /// Whether `check` is `verifier`'s pass of this fake.
    fn passed_by(&self, check: &Signed<AnswerCheck>, verifier: AccountId) -> bool {
        check.verify().is_ok()
            && check.body.verifier == verifier
            && check.body.batch == self.root
            && check.body.answer == self.leaf
            && check.body.outcome == AnswerCheckOutcome::Pass
    }
}

/// A ringer to send with the check of answer `index` of `batch` to `verifier`, at
/// `serve_ringer_ppm`: the fake ([`ringer_record`]) of an answer of the batch that was not
/// sampled when there is one (so the verifier never sees the fake's request in real work),
/// signed by a ringer key as the only answer of a batch of its own, with the operator's beacon
/// over that batch's root.
fn ringer_job(
    node: &Node,
    batch: &ServeBatch,
    index: u32,
    draw: u32,
    receipts: &[(TaskId, crate::store::ServedReceipt)],
    verifier: AccountId,
) -> Option<Ringer> {
    let pick = ringer_draw(node, &batch.root, index)?;
    let unsampled: Vec<usize> = (0..receipts.len())
        .filter(|i| !batch.sampled.contains(&(*i as u32)))
        .collect();
    let source = if unsampled.is_empty() {
        &receipts[index as usize].1
    } else {
        &receipts[unsampled[(pick % unsampled.len() as u64) as usize]].1
    };
    let record = ringer_record(&source.record)?;
    let key = serve_ringer_key(&node.operator, &batch.root, index, draw, &verifier);
    let mut fake = source.answer.body.clone();
    fake.worker = key.account();
    fake.output = market_protocol::StateHash(Hash::of(record.as_bytes()));
    let signed = Signed::sign(fake, &key).ok()?;
    let leaf = signed.id().ok()?;
    let root = market_protocol::MerkleTree::new(&[leaf.0]).root();
    let (beacon, beacon_proof) = prove_batch_beacon(&node.operator, &root);
    Some(Ringer {
        job: AnswerCheckJob {
            job: 0,
            batch: root,
            worker: key.account(),
            answers: 1,
            sampled: 1,
            beacon,
            beacon_proof,
            index: 0,
            proof: Vec::new(),
            request: source.request.clone(),
            answer: signed,
            record,
        },
        root,
        leaf,
        tokens: check_tokens(source),
    })
}

/// The weights a served request names.
fn weights_of(task: &market_protocol::TaskSpec) -> anyhow::Result<BlobId> {
    match &task.workload {
        Workload::Inference(inf) => inf
            .weights
            .ok_or_else(|| anyhow::anyhow!("a served request names no weights")),
        Workload::Training(_) => anyhow::bail!("a served request is no inference"),
    }
}

/// Pays each verifier whose check passed its fee, from the checked answer's escrow (at most the
/// answer's cost): out of the worker's pay. (A verifier that catches a fake is paid from the
/// worker's slash instead, so the buyers get all they paid back.)
async fn pay_check_fees(node: &Arc<Node>, batch: &mut ServeBatch) -> anyhow::Result<()> {
    for check in batch.checks.clone() {
        let Some(&(answer, _)) = batch.answers.iter().find(|(_, l)| *l == check.body.answer) else {
            continue;
        };
        let Some(receipt) = node.store.served_receipt(&answer)? else {
            continue;
        };
        let fee = node.config.serve_check_fee.min(receipt.cost);
        if fee == 0 || node.ledger.escrow_of(&answer).is_none() {
            continue;
        }
        let a = node
            .append(
                Operation::ServeCheckFee { answer },
                EntryKind::Reward {
                    amount: Credits(fee),
                    task_id: answer,
                    verdict: None,
                    verifier: check.body.verifier,
                },
            )
            .await?;
        push(&mut batch.ledger, a.seq());
    }
    Ok(())
}

async fn settle_passed(node: &Arc<Node>, batch: &mut ServeBatch) -> anyhow::Result<()> {
    pay_check_fees(node, batch).await?;
    for (answer, _) in batch.answers.clone() {
        let Some(escrow) = node.ledger.escrow_of(&answer) else {
            continue;
        };
        if escrow.remaining.0 == 0 {
            continue;
        }
        let a = node
            .append(
                Operation::ServeRelease { answer },
                EntryKind::Release {
                    amount: escrow.remaining,
                    commitment: None,
                    task_id: answer,
                    worker: batch.worker,
                },
            )
            .await?;
        push(&mut batch.ledger, a.seq());
    }
    batch.status = BatchStatus::Verified;
    tracing::info!(batch = %batch.root, answers = batch.answers.len(), "served batch verified");
    Ok(())
}

async fn settle_failed(
    node: &Arc<Node>,
    batch: &mut ServeBatch,
    answer: TaskId,
    victim: market_protocol::AccountId,
    why: &str,
) -> anyhow::Result<()> {
    for (a, _) in batch.answers.clone() {
        let Some(escrow) = node.ledger.escrow_of(&a) else {
            continue;
        };
        if escrow.remaining.0 == 0 {
            continue;
        }
        let e = node
            .append(
                Operation::ServeRefund { answer: a },
                EntryKind::Refund {
                    amount: escrow.remaining,
                    buyer: escrow.buyer,
                    task_id: a,
                },
            )
            .await?;
        push(&mut batch.ledger, e.seq());
    }
    // The worker's slash pays the fee of the verifier that caught it first (when a verifier
    // did, rather than the node's own bill check), the rest to the buyer of the caught answer.
    let stake = node.ledger.stake(&batch.worker).0;
    let total = node.config.worker_slash.min(stake);
    let catcher = batch
        .checks
        .iter()
        .find(|c| c.body.outcome != AnswerCheckOutcome::Pass)
        .map(|c| c.body.verifier);
    let fee = catcher.map_or(0, |_| node.config.serve_check_fee.min(total));
    let mut payees: Vec<(AccountId, u64)> = vec![(victim, total - fee)];
    if let Some(c) = catcher {
        if c == victim {
            payees[0].1 = total;
        } else {
            payees.push((c, fee));
        }
    }
    let evidence = failure_evidence(&batch.root, &answer);
    for (payee, amount) in payees {
        if amount == 0 {
            continue;
        }
        let appended = node
            .append(
                Operation::ServeSlash {
                    batch: batch.root,
                    payee,
                },
                EntryKind::Slash {
                    account: batch.worker,
                    amount: Credits(amount),
                    evidence,
                    reason: format!("served answer {answer} failed its check: {why}"),
                    to: payee,
                    verdict: None,
                },
            )
            .await;
        match appended {
            Ok(a) => push(&mut batch.ledger, a.seq()),
            // Slashed before a restart, when the stake was other: done.
            Err(e) => tracing::warn!(error = %e, "a served batch's slash"),
        }
    }
    batch.status = BatchStatus::Failed;
    batch.failure = Some(format!("answer {answer}: {why}"));
    tracing::warn!(batch = %batch.root, worker = %batch.worker, %why, "served batch failed");
    Ok(())
}

/// The evidence of a failed batch's slash: `blake3("serve_failed:" ROOT ":" ANSWER)`, ids in
/// lowercase hex, so anyone reading the export can tie the slash to the batch and the answer.
pub fn failure_evidence(root: &Hash, answer: &TaskId) -> Hash {
    Hash::of(format!("serve_failed:{root}:{answer}").as_bytes())
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn push(seqs: &mut Vec<u64>, seq: u64) {
    if !seqs.contains(&seq) {
        seqs.push(seq);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A node that crashed with requests in flight settles their holds when it comes back:
    /// a request that had no answer gets its whole hold back; one whose answer was recorded
    /// keeps just its cost escrowed (for its batch's audit) and gets the rest back. Without
    /// the recovery both holds would stay escrowed for ever. Run twice, it changes nothing
    /// more (each refund is one ledger operation).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_a_crash_left_in_flight_go_back_when_the_node_returns() {
        use market_compute::serving::{model_spec_of, ServePrompt, ServeRequest};
        use market_protocol::{AuditPolicy, Decoding, Version};
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(
            dir.path(),
            crate::config::NodeConfig::default(),
            Identity::from_test_label("crash operator"),
            Arc::new(crate::dispatch::InProcess::default()),
        )
        .unwrap();
        let buyer = Identity::from_test_label("crash buyer");
        let worker = Identity::from_test_label("crash worker");
        node.fund("test", &buyer.account(), 1_000, 0).await.unwrap();
        let model = market_compute::llama::fixtures::tiny_gguf(11).unwrap();
        let request = |nonce: u64| {
            ServeRequest {
                buyer: buyer.account(),
                nonce,
                weights: BlobId::of(&model),
                model: model_spec_of(&model).unwrap(),
                profile: ExecutionProfile::Repro,
                prompt: ServePrompt::Text("hi".into()),
                max_new_tokens: 8,
                stop: Vec::new(),
                decoding: Decoding::Greedy,
                seed: 0,
                price: Credits(300),
                audit: AuditPolicy {
                    detection_target: "0.99".parse().unwrap(),
                    assumed_faked_fraction: "0.1".parse().unwrap(),
                },
            }
            .to_task()
        };
        // Two requests held 300 each at unix second 100 and escrowed; the second's answer,
        // costing 40, was recorded before the crash.
        let mut receipts = Vec::new();
        for nonce in [1, 2] {
            let task = request(nonce);
            let id = TaskId(market_protocol::message_id(&task).unwrap());
            node.store.add_hold(&id, 100).unwrap();
            node.append(
                Operation::ServeEscrow { answer: id },
                EntryKind::Escrow {
                    amount: Credits(300),
                    buyer: buyer.account(),
                    spec: None,
                    task_id: id,
                },
            )
            .await
            .unwrap();
            receipts.push((id, task));
        }
        let (answered, task) = receipts[1].clone();
        let answer = Signed::sign(
            market_protocol::Answer {
                version: Version::CURRENT,
                worker: worker.account(),
                request: answered,
                model: BlobId::of(&model),
                output: market_protocol::StateHash(Hash::of(b"record")),
                prompt_tokens: 2,
                completion_tokens: 2,
            },
            &worker,
        )
        .unwrap();
        let receipt = crate::store::ServedReceipt {
            request: task,
            answer: answer.clone(),
            record: "record".into(),
            key: "key_test".into(),
            model_name: "tiny".into(),
            cost: 40,
            created: 100,
            escrow_seq: None,
        };
        let leaf = answer.id().unwrap();
        node.store
            .record_served(
                &answered,
                &receipt,
                &Hash::default(),
                &worker.account(),
                &leaf,
                100,
            )
            .unwrap();
        assert_eq!(node.ledger.balance(&buyer.account()).0, 400);
        // The node comes back at second 200.
        once(&node, 200).await.unwrap();
        once(&node, 200).await.unwrap();
        assert_eq!(node.ledger.balance(&buyer.account()).0, 1_000 - 40);
        assert_eq!(
            node.ledger.escrow_of(&receipts[0].0).unwrap().remaining.0,
            0
        );
        assert_eq!(node.ledger.escrow_of(&answered).unwrap().remaining.0, 40);
        assert!(!node.store.has_hold(&receipts[0].0).unwrap());
        assert!(!node.store.has_hold(&answered).unwrap());
    }

    #[test]
    fn the_sample_is_a_share_rounded_up_and_never_empty() {
        assert_eq!(audited(32, 250_000), 8);
        assert_eq!(audited(33, 250_000), 9);
        assert_eq!(audited(1, 1), 1);
        assert_eq!(audited(5, 1_000_000), 5);
        assert_eq!(audited(0, 250_000), 0);
    }

    #[test]
    fn the_catch_chance_is_hypergeometric() {
        assert_eq!(catch_chance(32, 0, 8), 0.0);
        assert!((catch_chance(32, 32, 1) - 1.0).abs() < 1e-12);
        // One faked answer in 4, 2 checked: 1 - (3/4)(2/3) = 1/2.
        assert!((catch_chance(4, 1, 2) - 0.5).abs() < 1e-12);
        assert!(catch_chance(32, 8, 8) > 0.9);
        // The largest batch a node runs: one faked answer in it, a quarter checked.
        let n = crate::config::MAX_SERVE_BATCH_ANSWERS;
        assert!((catch_chance(n, 1, audited(n, 250_000)) - 0.25).abs() < 1e-9);
        // A configured batch length beyond the cap is the cap (a plan of usize::MAX answers
        // took the API thread for minutes before).
        let config = crate::config::NodeConfig {
            serve_batch_answers: usize::MAX,
            ..Default::default()
        };
        assert_eq!(config.serve_batch_len(), n);
    }
}
