//! Serving: workers keep models loaded, the node routes each API request to one of them and
//! streams its answer back.
//!
//! A request becomes a one-item inference task ([`ServeRequest::to_task`]); its message id is
//! the answer's receipt id. The worker streams the text, then signs an [`Answer`] binding the
//! request to the answer record's hash; the node checks that the record is what was streamed
//! and what the answer signs before the buyer sees the end of it. A worker that drops before
//! its answer is signed loses the request to another worker serving the same weights in the
//! same profile: decoding is deterministic (greedy, or sampling from the request's seed), so
//! the new worker's text starts with what the client already has, and only the rest is sent.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use market_compute::inference::AnswerRecord;
use market_compute::serving::{model_spec_of, ServeRequest};
use market_net::wire::{ServeOffer, MAX_SERVE_OFFERS, MAX_TEXT_PIECE_BYTES};
use market_protocol::{
    message_id, AccountId, Answer, BlobId, ExecutionProfile, Hash, ModelSpec, Signed, StateHash,
    TaskId, TaskSpec, Workload,
};
use tokio::sync::mpsc;

pub mod audit;

/// Most requests one worker may take at once.
pub const MAX_CONCURRENCY: u32 = 64;
/// How long a worker may stay silent in the middle of an answer before the request moves on.
pub const PIECE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most workers one request is tried on.
pub const MAX_ATTEMPTS: usize = 3;
/// How long a request waits for a free slot when every worker that serves its model is busy
/// (or refuses it for now) before it fails with 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(30);
/// What an attempt's error starts with when the worker did not take the request (busy or
/// refusing): the request waits and asks again rather than moving on.
const NOT_TAKEN: &str = "the worker did not take the request";

/// A verifier took a check and sent nothing back in time (as opposed to refusing it or being
/// away): it costs the verifier a point of reputation.
#[derive(Debug, thiserror::Error)]
#[error("verifier {verifier} took the check and sent nothing within {timeout:?}")]
pub struct SilentVerifier {
    /// The verifier.
    pub verifier: AccountId,
    /// How long it had.
    pub timeout: Duration,
}

/// Sends a request to a serving worker (the network implements it).
pub trait ServeLink: Send + Sync {
    /// Asks `worker` to answer `task` under the node's number `request`; resolves once the
    /// worker accepted it (the answer arrives through [`Serving::on_text`] and friends).
    fn generate(
        &self,
        worker: AccountId,
        request: u64,
        task: TaskSpec,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

    /// Asks `verifier` to check a sampled answer (`job.job` is set by the link); resolves with
    /// its signed check, or an error if it refused or sent none within `timeout`.
    fn check_answer(
        &self,
        verifier: AccountId,
        job: market_net::wire::AnswerCheckJob,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Signed<market_protocol::AnswerCheck>>> + Send>>;
}

/// What a worker sent about a request.
#[derive(Debug)]
enum WorkerEvent {
    Text(String),
    Answered(Box<Signed<Answer>>, String),
    Failed(String),
    Lost(String),
}

struct Pending {
    worker: AccountId,
    task_id: TaskId,
    model: BlobId,
    next_seq: u32,
    tx: mpsc::UnboundedSender<WorkerEvent>,
}

#[derive(Default)]
struct State {
    /// Offers by worker (each list replaced whole by the worker's latest).
    offers: BTreeMap<AccountId, Vec<ServeOffer>>,
    /// Requests each worker is answering now.
    load: BTreeMap<AccountId, u32>,
    /// Model sections, read from the node's copy of each served blob.
    specs: BTreeMap<BlobId, ModelSpec>,
    /// Each served blob's header and tokenizer, by profile (no weights): requests are
    /// Requests in flight, by the node's number.
    pending: BTreeMap<u64, Pending>,
}

/// A model clients can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModel {
    /// What clients name it: the workers' name, unless two blobs claim it (then the blob id).
    pub id: String,
    /// The GGUF blob.
    pub blob: BlobId,
    /// Workers serving it now.
    pub workers: usize,
    /// The lowest price per token among them.
    pub price_per_token: u64,
    /// The profiles it is served in.
    pub profiles: Vec<ExecutionProfile>,
}

/// The worker chosen for a request.
#[derive(Debug, Clone)]
pub struct Route {
    /// The worker.
    pub worker: AccountId,
    /// Its offer.
    pub offer: ServeOffer,
    /// The model section of the blob.
    pub spec: ModelSpec,
}

/// How a request went, as the API streams it.
#[derive(Debug)]
pub enum Progress {
    /// The next piece of the answer's text.
    Text(String),
    /// The answer, checked.
    Done(Box<Finished>),
    /// No answer.
    Failed(String),
}

/// A checked answer.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The request as a task (its message id is the receipt's id).
    pub task: TaskSpec,
    /// The receipt's id.
    pub receipt: TaskId,
    /// The worker's signed answer.
    pub answer: Signed<Answer>,
    /// The record it signs.
    pub record: AnswerRecord,
    /// The record's bytes.
    pub record_json: String,
    /// The price per token of the worker that answered.
    pub price_per_token: u64,
}

/// The serving side of a node.
#[derive(Default)]
pub struct Serving {
    state: Mutex<State>,
    next_request: AtomicU64,
    link: OnceLock<Arc<dyn ServeLink>>,
    holds: Mutex<Holds>,
    /// Served models the node keeps: header and tokenizer (to validate requests and count
    /// bills) and, for the referee, with their weights.
    pub(crate) loaded: market_compute::serving::ModelCache,
    /// Batches whose audit runs now (each in a task of its own).
    pub(crate) auditing: Mutex<std::collections::BTreeSet<Hash>>,
    /// Whether a worker may be sent requests (the node's rule: it holds the minimum stake,
    /// so a worker slashed out of it stops serving).
    eligible: OnceLock<Eligibility>,
}

type Eligibility = Box<dyn Fn(&AccountId) -> bool + Send + Sync>;

/// Credits held for requests in flight, by account and by API key.
#[derive(Default)]
struct Holds {
    accounts: BTreeMap<AccountId, u64>,
    keys: BTreeMap<String, u64>,
}

/// Credits held for one request while it runs; released when dropped.
#[derive(Debug)]
pub struct HoldGuard {
    serving: Arc<Serving>,
    account: AccountId,
    key: String,
    amount: u64,
    /// Escrowed in the ledger: the account's balance no longer holds it, so it is no longer
    /// counted against the account here (it still is against the key, until the answer's
    /// cost is spent on it).
    escrowed: bool,
}

impl HoldGuard {
    /// The hold is now escrowed in the ledger (taken from the account's balance): counting it
    /// against the balance as well would refuse the account's next request for credits it
    /// still has.
    pub fn escrowed(&mut self) {
        if self.escrowed {
            return;
        }
        self.escrowed = true;
        let mut h = self.serving.holds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = h.accounts.get_mut(&self.account) {
            *held = held.saturating_sub(self.amount);
        }
        h.accounts.retain(|_, v| *v > 0);
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let mut h = self.serving.holds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = h.accounts.get_mut(&self.account).filter(|_| !self.escrowed) {
            *held = held.saturating_sub(self.amount);
        }
        if let Some(held) = h.keys.get_mut(&self.key) {
            *held = held.saturating_sub(self.amount);
        }
        h.accounts.retain(|_, v| *v > 0);
        h.keys.retain(|_, v| *v > 0);
    }
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").finish_non_exhaustive()
    }
}

impl Serving {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets which workers may be sent requests (once).
    pub fn set_eligibility(&self, eligible: impl Fn(&AccountId) -> bool + Send + Sync + 'static) {
        let _ = self.eligible.set(Box::new(eligible));
    }

    /// Connects the network (once).
    pub fn set_link(&self, link: Arc<dyn ServeLink>) {
        let _ = self.link.set(link);
    }

    /// The network, once connected.
    pub(crate) fn link(&self) -> Option<Arc<dyn ServeLink>> {
        self.link.get().cloned()
    }

    /// Holds `amount` for a request of `account` through `key`, if `check` accepts it given
    /// what the account and the key already hold for requests in flight (checked and taken
    /// under one lock, so concurrent requests cannot together overspend).
    pub fn hold<E>(
        self: &Arc<Self>,
        account: AccountId,
        key: &str,
        amount: u64,
        check: impl FnOnce(u64, u64) -> Result<(), E>,
    ) -> Result<HoldGuard, E> {
        let mut h = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let on_account = h.accounts.get(&account).copied().unwrap_or(0);
        let on_key = h.keys.get(key).copied().unwrap_or(0);
        check(on_account, on_key)?;
        *h.accounts.entry(account).or_default() += amount;
        *h.keys.entry(key.to_string()).or_default() += amount;
        Ok(HoldGuard {
            serving: self.clone(),
            account,
            key: key.to_string(),
            amount,
            escrowed: false,
        })
    }

    /// A fresh request number.
    pub fn next_request(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes `worker`'s list of offers. Each model must be a blob the node holds (`read`
    /// gives its bytes), so its answers can be audited; its model section is read from the
    /// node's copy, not taken from the worker. Call off the async threads (it reads files).
    pub fn offer(
        &self,
        worker: AccountId,
        offers: Vec<ServeOffer>,
        read: impl Fn(&BlobId) -> Option<Vec<u8>>,
    ) -> Result<(), String> {
        if offers.len() > MAX_SERVE_OFFERS {
            return Err(format!("at most {MAX_SERVE_OFFERS} models per worker"));
        }
        let mut specs = Vec::new();
        for offer in &offers {
            if !ServeOffer::valid_name(&offer.name) {
                return Err(format!("{:?} is not a valid model name", offer.name));
            }
            if offer.concurrency == 0 || offer.concurrency > MAX_CONCURRENCY {
                return Err(format!("concurrency must be 1 to {MAX_CONCURRENCY}"));
            }
            if self
                .loaded
                .find(offer.model, offer.profile, false)
                .is_some()
            {
                continue;
            }
            let bytes = read(&offer.model).ok_or_else(|| {
                format!(
                    "the node does not hold model {}: upload it first, so its answers can be audited",
                    offer.model
                )
            })?;
            let spec = model_spec_of(&bytes)
                .map_err(|e| format!("model {} is not a servable llama: {e}", offer.model))?;
            // Its header and tokenizer: requests are validated against them before anything
            // is held or sent.
            let planner = market_compute::serving::ServedModel::plan(&bytes, offer.profile, worker)
                .map_err(|e| format!("model {} cannot be served: {e}", offer.model))?;
            specs.push((offer.model, spec, planner));
        }
        let mut st = self.state();
        for (blob, spec, planner) in specs {
            st.specs.insert(blob, spec);
            self.loaded.keep(planner, false);
        }
        if offers.is_empty() {
            st.offers.remove(&worker);
        } else {
            st.offers.insert(worker, offers);
        }
        Ok(())
    }

    /// Checks that `task` (a request written for a served blob) can be answered by the model:
    /// its prompt renders and encodes, and fits the model's positions with the tokens it asks
    /// for. Returns the prompt's tokens. A client's mistake found here costs nothing.
    pub fn validate(&self, task: &TaskSpec) -> market_compute::Result<u32> {
        let Workload::Inference(inf) = &task.workload else {
            return Err(market_compute::ComputeError::config(
                "workload",
                "a served request is an inference",
            ));
        };
        let planner = inf
            .weights
            .and_then(|w| self.loaded.find(w, task.profile, false));
        match planner {
            Some(p) => p.prompt_tokens(task),
            None => Err(market_compute::ComputeError::config(
                "model",
                "is not served in this profile",
            )),
        }
    }

    /// `worker` left: its offers go, and its requests in flight move to other workers.
    pub fn worker_gone(&self, worker: &AccountId) {
        let mut st = self.state();
        st.offers.remove(worker);
        for p in st.pending.values().filter(|p| p.worker == *worker) {
            let _ =
                p.tx.send(WorkerEvent::Lost("the worker disconnected".into()));
        }
    }

    /// The models served now, by name (by eligible workers).
    pub fn models(&self) -> Vec<ServedModel> {
        let st = self.state();
        let mut by_blob: BTreeMap<BlobId, ServedModel> = BTreeMap::new();
        let mut names: BTreeMap<&str, Vec<BlobId>> = BTreeMap::new();
        for offer in st
            .offers
            .iter()
            .filter(|(w, _)| self.is_eligible(w))
            .flat_map(|(_, o)| o)
        {
            let m = by_blob.entry(offer.model).or_insert_with(|| ServedModel {
                id: offer.name.clone(),
                blob: offer.model,
                workers: 0,
                price_per_token: u64::MAX,
                profiles: Vec::new(),
            });
            m.workers += 1;
            m.price_per_token = m.price_per_token.min(offer.price_per_token);
            if !m.profiles.contains(&offer.profile) {
                m.profiles.push(offer.profile);
            }
            let blobs = names.entry(offer.name.as_str()).or_default();
            if !blobs.contains(&offer.model) {
                blobs.push(offer.model);
            }
        }
        by_blob
            .into_values()
            .map(|mut m| {
                // A name two blobs claim names neither: clients use the blob id.
                if names.get(m.id.as_str()).is_some_and(|b| b.len() > 1) {
                    m.id = m.blob.to_string();
                }
                m
            })
            .collect()
    }

    /// The blob a client's model name means: a served model's name or its blob id.
    pub fn resolve(&self, name: &str) -> Option<BlobId> {
        self.models()
            .into_iter()
            .find(|m| m.id == name || m.blob.to_string() == name)
            .map(|m| m.blob)
    }

    /// The worker to ask: among those serving `blob` (in `profile`, if given, and at most
    /// `max_price` per token) with a free request slot, not in `tried`, the least loaded,
    /// then the cheapest, then the lowest account.
    pub fn route(
        &self,
        blob: &BlobId,
        profile: Option<ExecutionProfile>,
        max_price: u64,
        tried: &[AccountId],
    ) -> Option<Route> {
        let st = self.state();
        let spec = st.specs.get(blob)?.clone();
        self.candidates(&st, blob, profile, max_price, tried)
            .into_iter()
            .filter_map(|(w, offer)| {
                let load = st.load.get(&w).copied().unwrap_or(0);
                (load < offer.concurrency).then_some((load, offer.price_per_token, w, offer))
            })
            .min_by(|a, b| {
                // Least loaded as a share of what each takes at once, compared exactly.
                let (la, lb) = (
                    u64::from(a.0) * u64::from(b.3.concurrency),
                    u64::from(b.0) * u64::from(a.3.concurrency),
                );
                la.cmp(&lb).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
            })
            .map(|(_, _, worker, offer)| Route {
                worker,
                offer: offer.clone(),
                spec: spec.clone(),
            })
    }

    /// `eligible` as the node set it (everyone before it is set).
    fn is_eligible(&self, worker: &AccountId) -> bool {
        self.eligible.get().is_none_or(|ok| ok(worker))
    }

    /// Every eligible worker not in `tried` with its offer of `blob` (in `profile`, at most
    /// `max_price` per token), busy or not: what `route` and `offered` choose among.
    fn candidates<'a>(
        &self,
        st: &'a State,
        blob: &BlobId,
        profile: Option<ExecutionProfile>,
        max_price: u64,
        tried: &[AccountId],
    ) -> Vec<(AccountId, &'a ServeOffer)> {
        st.offers
            .iter()
            .filter(|(w, _)| !tried.contains(w) && self.is_eligible(w))
            .filter_map(|(w, offers)| {
                offers
                    .iter()
                    .find(|o| {
                        o.model == *blob
                            && profile.is_none_or(|p| p == o.profile)
                            && o.price_per_token <= max_price
                    })
                    .map(|o| (*w, o))
            })
            .collect()
    }

    /// Whether an eligible worker not in `tried` offers `blob` (in `profile`, at most
    /// `max_price` per token), busy or not.
    pub fn any_offer(
        &self,
        blob: &BlobId,
        profile: Option<ExecutionProfile>,
        max_price: u64,
        tried: &[AccountId],
    ) -> bool {
        self.offered(blob, profile, max_price, tried).is_some()
    }

    /// Among eligible workers not in `tried` offering `blob` (in `profile`, at most
    /// `max_price` per token), busy or not: the cheapest one's route, and the highest price
    /// any of them asks.
    pub fn offered(
        &self,
        blob: &BlobId,
        profile: Option<ExecutionProfile>,
        max_price: u64,
        tried: &[AccountId],
    ) -> Option<(Route, u64)> {
        let st = self.state();
        let spec = st.specs.get(blob)?.clone();
        let offers = self.candidates(&st, blob, profile, max_price, tried);
        let highest = offers.iter().map(|(_, o)| o.price_per_token).max()?;
        let (worker, offer) = offers
            .into_iter()
            .min_by_key(|(w, o)| (o.price_per_token, *w))?;
        Some((
            Route {
                worker,
                offer: offer.clone(),
                spec,
            },
            highest,
        ))
    }

    fn event(&self, worker: &AccountId, request: u64, event: WorkerEvent) -> Result<(), String> {
        let st = self.state();
        let p = st.pending.get(&request).ok_or("no such request")?;
        if p.worker != *worker {
            return Err("not your request".into());
        }
        p.tx.send(event)
            .map_err(|_| "the request is over".to_string())
    }

    /// The next piece of `request`'s text from `worker`.
    pub fn on_text(
        &self,
        worker: &AccountId,
        request: u64,
        seq: u32,
        text: String,
    ) -> Result<(), String> {
        if text.len() > MAX_TEXT_PIECE_BYTES {
            return Err(format!(
                "a text piece is at most {MAX_TEXT_PIECE_BYTES} bytes"
            ));
        }
        {
            let mut st = self.state();
            let p = st.pending.get_mut(&request).ok_or("no such request")?;
            if p.worker != *worker {
                return Err("not your request".into());
            }
            if seq != p.next_seq {
                return Err(format!("piece {seq} where {} was due", p.next_seq));
            }
            p.next_seq += 1;
        }
        self.event(worker, request, WorkerEvent::Text(text))
    }

    /// `worker`'s signed answer to `request`: checked against the request before it is taken.
    pub fn on_answered(
        &self,
        worker: &AccountId,
        request: u64,
        answer: Signed<Answer>,
        record: String,
    ) -> Result<(), String> {
        let body = answer
            .verify()
            .map_err(|e| format!("the answer's signature: {e}"))?;
        {
            let st = self.state();
            let p = st.pending.get(&request).ok_or("no such request")?;
            if body.worker != *worker || p.worker != *worker {
                return Err("the answer names another worker".into());
            }
            if body.request != p.task_id || body.model != p.model {
                return Err("the answer is for another request or model".into());
            }
        }
        if body.output != StateHash(Hash::of(record.as_bytes())) {
            return Err("the answer signs another record".into());
        }
        self.event(
            worker,
            request,
            WorkerEvent::Answered(Box::new(answer), record),
        )
    }

    /// `worker` cannot answer `request`.
    pub fn on_unanswered(
        &self,
        worker: &AccountId,
        request: u64,
        reason: String,
    ) -> Result<(), String> {
        self.event(worker, request, WorkerEvent::Failed(reason))
    }

    /// Runs `request` to its answer, trying up to [`MAX_ATTEMPTS`] workers, sending the text
    /// and then the checked answer (or the failure) to `out`. The client's text is never taken
    /// back: after a failover only what goes beyond it is sent.
    pub async fn run(
        self: Arc<Self>,
        request: ServeRequest,
        max_price: u64,
        out: mpsc::UnboundedSender<Progress>,
    ) {
        let failure = match self.attempts(request, max_price, &out).await {
            Ok(done) => {
                let _ = out.send(Progress::Done(Box::new(done)));
                return;
            }
            Err(why) => why,
        };
        let _ = out.send(Progress::Failed(failure));
    }

    /// Every attempt answers the same task (the request's profile and model section are
    /// fixed before the first), so the receipt's id is known before the answer.
    async fn attempts(
        &self,
        request: ServeRequest,
        max_price: u64,
        out: &mpsc::UnboundedSender<Progress>,
    ) -> Result<Finished, String> {
        let link = self.link.get().ok_or("this node has no network")?.clone();
        let task = request.to_task();
        let mut tried = Vec::new();
        let mut sent = String::new();
        let mut last_error = "no worker serves this model now".to_string();
        let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
        let profile = Some(request.profile);
        while tried.len() < MAX_ATTEMPTS {
            let Some(route) = self.route(&request.weights, profile, max_price, &tried) else {
                // Every worker left for it is busy: wait for a slot, up to QUEUE_WAIT.
                let waiting = self.any_offer(&request.weights, profile, max_price, &tried);
                if !waiting || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let task = task.clone();
            match self.attempt(&*link, &route, task, &mut sent, out).await {
                Ok(done) => return Ok(done),
                Err(e) if e == DIVERGED => return Err(e),
                // Not taken (a slot the node thought free was not yet, or a refusal): nothing
                // ran, so the same worker may be asked again once the wait allows.
                Err(e) if e.starts_with(NOT_TAKEN) && tokio::time::Instant::now() < deadline => {
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    tracing::warn!(worker = %route.worker, error = %e, "a served request moves on");
                    tried.push(route.worker);
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    async fn attempt(
        &self,
        link: &dyn ServeLink,
        route: &Route,
        task: TaskSpec,
        sent: &mut String,
        out: &mpsc::UnboundedSender<Progress>,
    ) -> Result<Finished, String> {
        let task_id = TaskId(message_id(&task).map_err(|e| e.to_string())?);
        let number = self.next_request();
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            let mut st = self.state();
            st.pending.insert(
                number,
                Pending {
                    worker: route.worker,
                    task_id,
                    model: route.offer.model,
                    next_seq: 0,
                    tx,
                },
            );
            *st.load.entry(route.worker).or_default() += 1;
        }
        let _guard = PendingGuard {
            serving: self,
            number,
            worker: route.worker,
        };
        link.generate(route.worker, number, task.clone())
            .await
            .map_err(|e| format!("{NOT_TAKEN}: {e}"))?;
        let mut text = String::new();
        loop {
            let event = tokio::time::timeout(PIECE_TIMEOUT, rx.recv())
                .await
                .map_err(|_| "the worker went silent".to_string())?
                .ok_or("the request was dropped")?;
            match event {
                WorkerEvent::Text(piece) => {
                    text.push_str(&piece);
                    forward_beyond(&text, sent, out)?;
                }
                WorkerEvent::Answered(answer, record_json) => {
                    let record = AnswerRecord::from_bytes(record_json.as_bytes())
                        .map_err(|e| format!("the answer record: {e}"))?;
                    let body = answer.verify().map_err(|e| e.to_string())?;
                    if record.text != text {
                        return Err("the signed answer is not the streamed text".into());
                    }
                    // The client must end up with exactly the answer its receipt names.
                    if text != *sent {
                        return Err(DIVERGED.into());
                    }
                    if body.completion_tokens as usize != record.tokens.len() {
                        return Err("the answer miscounts its tokens".into());
                    }
                    return Ok(Finished {
                        receipt: task_id,
                        task,
                        answer: *answer,
                        record,
                        record_json,
                        price_per_token: route.offer.price_per_token,
                    });
                }
                WorkerEvent::Failed(why) => return Err(format!("the worker failed: {why}")),
                WorkerEvent::Lost(why) => return Err(why),
            }
        }
    }
}

/// Why a request ends when a worker's text parts from what an earlier worker streamed.
const DIVERGED: &str =
    "the answer changed after a failover: the text already sent is not this worker's answer";

/// Sends the part of `text` beyond what the client has (`sent`), when `text` extends it. A
/// worker taking over after a failover first repeats what the client has; a `text` that
/// parts from it (the earlier worker streamed something else, honest or not) can never become
/// the answer the client was sent, so the request ends with an error rather than with a
/// receipt for text the client never saw.
fn forward_beyond(
    text: &str,
    sent: &mut String,
    out: &mpsc::UnboundedSender<Progress>,
) -> Result<(), String> {
    if text.len() > sent.len() {
        if !text.starts_with(sent.as_str()) {
            return Err(DIVERGED.into());
        }
        let _ = out.send(Progress::Text(text[sent.len()..].to_string()));
        sent.clear();
        sent.push_str(text);
    } else if !sent.starts_with(text) {
        return Err(DIVERGED.into());
    }
    Ok(())
}

/// Forgets a request attempt however it ends.
struct PendingGuard<'a> {
    serving: &'a Serving,
    number: u64,
    worker: AccountId,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.serving.state();
        st.pending.remove(&self.number);
        if let Some(load) = st.load.get_mut(&self.worker) {
            *load = load.saturating_sub(1);
            if *load == 0 {
                st.load.remove(&self.worker);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use market_compute::llama::fixtures::tiny_gguf;
    use market_compute::serving::ServePrompt;
    use market_protocol::{AuditPolicy, Credits, Decoding, Identity, Version};

    /// Workers that follow a script: `a` streams part of the answer and drops; `b` streams
    /// it whole and signs it, with `b_text` as the record's text.
    struct Scripted {
        serving: Arc<Serving>,
        a: Identity,
        b: Identity,
        a_text: String,
        b_text: String,
    }

    impl ServeLink for Scripted {
        fn check_answer(
            &self,
            _verifier: AccountId,
            _job: market_net::wire::AnswerCheckJob,
            _timeout: Duration,
        ) -> Pin<
            Box<dyn Future<Output = anyhow::Result<Signed<market_protocol::AnswerCheck>>> + Send>,
        > {
            Box::pin(async { anyhow::bail!("no verifiers in this test") })
        }

        fn generate(
            &self,
            worker: AccountId,
            request: u64,
            task: TaskSpec,
        ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
            let (serving, a, b) = (self.serving.clone(), self.a.clone(), self.b.clone());
            let (a_text, b_text) = (self.a_text.clone(), self.b_text.clone());
            tokio::spawn(async move {
                if worker == a.account() {
                    serving.on_text(&worker, request, 0, a_text).unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    serving.worker_gone(&worker);
                    return;
                }
                serving.on_text(&worker, request, 0, "Hel".into()).unwrap();
                // Out of order: refused, and changes nothing.
                assert!(serving.on_text(&worker, request, 5, "x".into()).is_err());
                serving.on_text(&worker, request, 1, "lo".into()).unwrap();
                let record = AnswerRecord {
                    finish: "end".into(),
                    logits: vec![0, 0, 0],
                    text: b_text,
                    tokens: vec![1, 2, 3],
                };
                let record = String::from_utf8(record.to_bytes()).unwrap();
                let Workload::Inference(inf) = &task.workload else {
                    unreachable!()
                };
                let answer = |worker: &Identity| Answer {
                    version: Version::CURRENT,
                    worker: worker.account(),
                    request: TaskId(message_id(&task).unwrap()),
                    model: inf.weights.unwrap(),
                    output: StateHash(Hash::of(record.as_bytes())),
                    prompt_tokens: 4,
                    completion_tokens: 3,
                };
                // Another worker's answer, sent by b, is refused.
                let forged = Signed::sign(answer(&a), &a).unwrap();
                assert!(serving
                    .on_answered(&worker, request, forged, record.clone())
                    .is_err());
                let signed = Signed::sign(answer(&b), &b).unwrap();
                serving
                    .on_answered(&worker, request, signed, record)
                    .unwrap();
            });
            Box::pin(async { Ok(()) })
        }
    }

    use market_protocol::Workload;

    async fn run(b_text: &str) -> (String, Option<Finished>, Option<String>, Arc<Serving>) {
        run_with("Hel", b_text).await
    }

    async fn run_with(
        a_text: &str,
        b_text: &str,
    ) -> (String, Option<Finished>, Option<String>, Arc<Serving>) {
        let serving = Arc::new(Serving::default());
        let bytes = tiny_gguf(3).unwrap();
        let blob = BlobId::of(&bytes);
        let (a, b) = (
            Identity::from_test_label("serving a"),
            Identity::from_test_label("serving b"),
        );
        for (who, price) in [(&a, 1), (&b, 2)] {
            let offer = ServeOffer {
                model: blob,
                name: "tiny".into(),
                profile: ExecutionProfile::Repro,
                price_per_token: price,
                concurrency: 1,
            };
            serving
                .offer(who.account(), vec![offer], |_| Some(bytes.clone()))
                .unwrap();
        }
        serving.set_link(Arc::new(Scripted {
            serving: serving.clone(),
            a,
            b,
            a_text: a_text.into(),
            b_text: b_text.into(),
        }));
        let request = ServeRequest {
            buyer: Identity::from_test_label("serving buyer").account(),
            nonce: 1,
            weights: blob,
            model: model_spec_of(&bytes).unwrap(),
            profile: ExecutionProfile::Repro,
            prompt: ServePrompt::Text("hi".into()),
            max_new_tokens: 8,
            stop: Vec::new(),
            decoding: Decoding::Greedy,
            seed: 0,
            price: Credits(100),
            audit: AuditPolicy {
                detection_target: "0.99".parse().unwrap(),
                assumed_faked_fraction: "0.1".parse().unwrap(),
            },
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(serving.clone().run(request, u64::MAX, tx));
        let (mut text, mut done, mut failed) = (String::new(), None, None);
        while let Some(p) = rx.recv().await {
            match p {
                Progress::Text(t) => text.push_str(&t),
                Progress::Done(d) => done = Some(*d),
                Progress::Failed(why) => failed = Some(why),
            }
        }
        (text, done, failed, serving)
    }

    #[tokio::test]
    async fn a_dropped_worker_loses_the_request_and_the_client_sees_one_answer() {
        let (text, done, failed, serving) = run("Hello").await;
        assert_eq!(failed, None);
        assert_eq!(
            text, "Hello",
            "the cheaper worker's part, then only the rest"
        );
        let done = done.unwrap();
        assert_eq!(
            done.answer.verify().unwrap().worker,
            Identity::from_test_label("serving b").account()
        );
        assert_eq!(done.price_per_token, 2);
        let st = serving.state();
        assert!(st.pending.is_empty() && st.load.is_empty());
        assert_eq!(st.offers.len(), 1, "the dropped worker's offer is gone");
    }

    /// A worker that streams made-up text and drops cannot get another worker's answer
    /// receipted under text the client never saw: the request ends with an error.
    #[tokio::test]
    async fn text_that_parts_from_what_the_client_has_ends_the_request() {
        let (text, done, failed, serving) = run_with("Hxl", "Hello").await;
        assert_eq!(text, "Hxl");
        assert!(done.is_none());
        assert!(failed.unwrap().contains("changed after a failover"));
        assert!(serving.state().pending.is_empty());
    }

    #[tokio::test]
    async fn an_answer_that_is_not_the_streamed_text_is_not_taken() {
        let (_, done, failed, _) = run("Help!").await;
        assert!(done.is_none());
        assert!(failed.unwrap().contains("not the streamed text"));
    }

    #[test]
    fn the_least_loaded_then_cheapest_worker_is_chosen() {
        let serving = Serving::default();
        let bytes = tiny_gguf(3).unwrap();
        let blob = BlobId::of(&bytes);
        let ids: Vec<AccountId> = (0..3)
            .map(|i| Identity::from_test_label(&format!("router {i}")).account())
            .collect();
        for (who, (price, concurrency)) in ids.iter().zip([(5, 4), (3, 1), (9, 2)]) {
            let offer = ServeOffer {
                model: blob,
                name: "tiny".into(),
                profile: ExecutionProfile::Repro,
                price_per_token: price,
                concurrency,
            };
            serving
                .offer(*who, vec![offer], |_| Some(bytes.clone()))
                .unwrap();
        }
        let pick = |max: u64, tried: &[AccountId]| {
            serving.route(&blob, None, max, tried).map(|r| r.worker)
        };
        assert_eq!(pick(u64::MAX, &[]), Some(ids[1]), "all idle: the cheapest");
        serving.state().load.insert(ids[1], 1);
        // ids[1] is full; ids[0] at 0/4 beats ids[2] at 0/2 on price.
        assert_eq!(pick(u64::MAX, &[]), Some(ids[0]));
        serving.state().load.insert(ids[0], 2);
        // ids[0] at 2/4 is as loaded as ids[2] would be at 1/2, but ids[2] is at 0/2.
        assert_eq!(pick(u64::MAX, &[]), Some(ids[2]));
        assert_eq!(pick(8, &[]), Some(ids[0]), "a price cap");
        assert_eq!(pick(u64::MAX, &[ids[0], ids[2]]), None, "tried or full");
        assert_eq!(serving.resolve("tiny"), Some(blob));
        assert_eq!(serving.resolve(&blob.to_string()), Some(blob));
        assert_eq!(serving.resolve("other"), None);
        // A name two blobs claim names neither.
        let other = tiny_gguf(4).unwrap();
        let offer = ServeOffer {
            model: BlobId::of(&other),
            name: "tiny".into(),
            profile: ExecutionProfile::Repro,
            price_per_token: 1,
            concurrency: 1,
        };
        serving
            .offer(ids[2], vec![offer], |_| Some(other.clone()))
            .unwrap();
        assert_eq!(serving.resolve("tiny"), None);
        // A worker the node's rule makes ineligible (below the minimum stake) is neither
        // routed to nor counted.
        let barred = ids[0];
        serving.set_eligibility(move |w| *w != barred);
        assert_eq!(
            pick(u64::MAX, &[ids[2]]),
            None,
            "ids[1] full, ids[0] barred"
        );
        assert!(
            serving.models().iter().all(|m| m.workers == 1),
            "{:?}",
            serving.models()
        );
        // Offers of weights the node does not hold, or that are no llama, are refused.
        let missing = ServeOffer {
            model: BlobId::of(b"nothing"),
            name: "x".into(),
            profile: ExecutionProfile::Repro,
            price_per_token: 1,
            concurrency: 1,
        };
        assert!(serving
            .offer(ids[0], vec![missing.clone()], |_| None)
            .is_err());
        assert!(serving
            .offer(ids[0], vec![missing], |_| Some(b"nothing".to_vec()))
            .is_err());
    }
}
