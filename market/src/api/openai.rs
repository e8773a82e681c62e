//! The OpenAI-compatible API: `GET /v1/models`, `POST /v1/chat/completions`,
//! `POST /v1/completions` (plain and streamed as server-sent events) and `GET
//! /v1/receipts/{id}`, authenticated with API keys ([`super::keys`]), failing with OpenAI's
//! error shape. Every answer carries the id of its receipt (a response field and the
//! `x-market-receipt` header): the worker's signed answer, checked by the node, until its audit.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use market_compute::inference::{MAX_NEW_TOKENS, MAX_STOP_BYTES, MAX_STOP_TEXTS};
use market_compute::llama::text::{sandboxed, RenderSandbox};
use market_compute::serving::{ServePrompt, ServeRequest};
use market_protocol::{
    message_id, AuditPolicy, ChatMessage, Credits, Decimal, Decoding, Hash, TaskId,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use super::keys::bearer;
use crate::auth::unix_now;
use crate::engine::Node;
use crate::serving::{Finished, HoldGuard, Progress};
use crate::store::{ApiKey, BatchStatus, ServedReceipt};

/// The response header that carries an answer's receipt id.
pub const RECEIPT_HEADER: &str = "x-market-receipt";
/// Most messages in one chat.
pub const MAX_MESSAGES: usize = 256;
/// Most bytes of text in one request's messages or prompt.
pub const MAX_PROMPT_BYTES: usize = 256 << 10;
/// Tokens generated when a request does not say (OpenAI's completions default is 16; a chat
/// answer needs more).
pub const DEFAULT_CHAT_TOKENS: u32 = 512;
/// The completions default.
pub const DEFAULT_COMPLETION_TOKENS: u32 = 16;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct OaiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    param: Option<&'static str>,
    message: String,
}

/// OpenAI's error body.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OaiErrorBody {
    error: OaiErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OaiErrorDetail {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

impl OaiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            message,
        }
    }

    /// 400 `invalid_request_error`, about `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
                message.into(),
            )
        }
    }

    /// 401 `authentication_error`.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            code,
            message.into(),
        )
    }

    /// 429 `insufficient_quota`: the account or the key cannot pay for the request.
    pub fn quota(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            message.into(),
        )
    }

    /// 404 for a model nobody serves.
    pub fn no_model(name: &str) -> Self {
        Self {
            param: Some("model"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!("the model `{name}` does not exist or no worker serves it now (GET /v1/models lists them)"),
            )
        }
    }

    /// 503: every worker serving the model is busy or failed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "no_capacity",
            message.into(),
        )
    }

    /// 500: the node's own fault (logged; the client sees a generic message).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            "internal error; see the node's log".into(),
        )
    }

    fn body(&self) -> OaiErrorBody {
        OaiErrorBody {
            error: OaiErrorDetail {
                message: self.message.clone(),
                kind: self.kind.into(),
                param: self.param.map(Into::into),
                code: Some(self.code.into()),
            },
        }
    }
}

impl IntoResponse for OaiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// A chat message's content: a string, or OpenAI's list of parts (text parts only).
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// One stop text or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// A prompt: a string, or a list holding one.
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptIn {
    One(String),
    Many(Vec<String>),
}

/// The fields both endpoints share. Unknown fields are ignored, as OpenAI's clients send
/// fields of newer API versions; known fields with values this market cannot honour are
/// refused.
#[derive(Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    logprobs: Option<serde_json::Value>,
    #[serde(default)]
    tools: Option<Vec<serde_json::Value>>,
    /// A market extension: the most the request may pay per token. Without it, the lowest
    /// price `GET /v1/models` shows for the model is the most it pays.
    #[serde(default)]
    max_price_per_token: Option<u64>,
}

#[derive(Deserialize)]
struct ChatIn {
    messages: Vec<InMessage>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct CompletionIn {
    prompt: PromptIn,
    #[serde(flatten)]
    common: Common,
}

/// A chat completion request (the fields this market reads; others are ignored).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ChatCompletionRequest {
    /// A served model's id (`GET /v1/models`).
    model: String,
    /// `system`, `user` and `assistant` messages; content is a string or a list of text parts.
    messages: Vec<serde_json::Value>,
    /// Most tokens generated (1 to 4096; default 512).
    max_tokens: Option<u32>,
    /// 0 for greedy decoding, up to 2 (default 1).
    temperature: Option<f64>,
    /// Nucleus sampling: above 0, at most 1 (default 1: every token); at most six decimals
    /// are kept.
    top_p: Option<f64>,
    /// Only 1.
    n: Option<u32>,
    /// Stream the answer as server-sent events.
    stream: Option<bool>,
    /// Up to 8 stop texts.
    stop: Option<serde_json::Value>,
    /// The sampling seed (drawn by the node when absent).
    seed: Option<i64>,
    /// A market extension: the most the request pays per token (default: the lowest price
    /// `GET /v1/models` shows).
    max_price_per_token: Option<u64>,
}

/// A completion request (the fields this market reads).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct CompletionRequest {
    /// A served model's id.
    model: String,
    /// One prompt (a string, or a list of one string).
    prompt: serde_json::Value,
    /// Most tokens generated (1 to 4096; default 16).
    max_tokens: Option<u32>,
    /// 0 for greedy decoding, up to 2 (default 1).
    temperature: Option<f64>,
    /// Stream the answer as server-sent events.
    stream: Option<bool>,
    /// Up to 8 stop texts.
    stop: Option<serde_json::Value>,
    /// The sampling seed.
    seed: Option<i64>,
    /// A market extension: the most the request pays per token.
    max_price_per_token: Option<u64>,
}

fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, OaiError> {
    let body = body.map_err(|e| {
        let mut err = OaiError::invalid("body", e.body_text());
        err.status = e.status();
        err
    })?;
    serde_json::from_slice(&body).map_err(|e| OaiError::invalid("body", e.to_string()))
}

/// The request's decoding, checked.
fn decoding(c: &Common) -> Result<Decoding, OaiError> {
    if c.n.is_some_and(|n| n != 1) {
        return Err(OaiError::invalid("n", "only n = 1 is served"));
    }
    let top_p = match c.top_p {
        // 1 (the default) keeps every token: no nucleus cut, as if absent.
        None => None,
        Some(1.0) => None,
        Some(p) if p > 0.0 && p < 1.0 => {
            let text = six_decimals(p);
            match text.parse::<Decimal>() {
                Ok(d) if d.to_f64() > 0.0 => Some(d),
                _ => {
                    return Err(OaiError::invalid(
                        "top_p",
                        "top_p is above 0 and at most 1 (with six decimals at most)",
                    ))
                }
            }
        }
        Some(_) => return Err(OaiError::invalid("top_p", "top_p is above 0 and at most 1")),
    };
    for (name, v) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(OaiError::invalid(
                name,
                format!("only {name} = 0 is served"),
            ));
        }
    }
    if c.logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && *v != json!(false))
    {
        return Err(OaiError::invalid(
            "logprobs",
            "log probabilities are not served",
        ));
    }
    if c.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(OaiError::invalid("tools", "tool calls are not served"));
    }
    let t = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&t) {
        return Err(OaiError::invalid("temperature", "temperature is 0 to 2"));
    }
    if t == 0.0 {
        return Ok(Decoding::Greedy);
    }
    let temperature: Decimal = six_decimals(t)
        .parse()
        .map_err(|_| OaiError::invalid("temperature", "temperature is 0 to 2"))?;
    if temperature.to_string() == "0" {
        return Ok(Decoding::Greedy);
    }
    Ok(Decoding::Sample {
        temperature,
        top_k: 0,
        top_p,
    })
}

/// Six decimals, trailing zeros dropped: a task's canonical spelling of a request's number.
fn six_decimals(v: f64) -> String {
    let text = format!("{v:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn max_tokens(c: &Common, default: u32) -> Result<u32, OaiError> {
    let n = c.max_completion_tokens.or(c.max_tokens).unwrap_or(default);
    if n == 0 || n > MAX_NEW_TOKENS {
        return Err(OaiError::invalid(
            "max_tokens",
            format!("max_tokens is 1 to {MAX_NEW_TOKENS}"),
        ));
    }
    Ok(n)
}

fn stops(c: &Common) -> Result<Vec<String>, OaiError> {
    let stops = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stops.len() > MAX_STOP_TEXTS
        || stops
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES || s.contains('\u{FFFD}'))
    {
        return Err(OaiError::invalid(
            "stop",
            format!("at most {MAX_STOP_TEXTS} stop texts of 1 to {MAX_STOP_BYTES} bytes"),
        ));
    }
    Ok(stops)
}

fn messages(raw: Vec<InMessage>) -> Result<Vec<ChatMessage>, OaiError> {
    if raw.is_empty() || raw.len() > MAX_MESSAGES {
        return Err(OaiError::invalid(
            "messages",
            format!("a chat has 1 to {MAX_MESSAGES} messages"),
        ));
    }
    raw.into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(OaiError::invalid(
                        "messages",
                        format!("the role {other:?} is not served (system, user, assistant)"),
                    ))
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            _ => {
                                return Err(OaiError::invalid(
                                    "messages",
                                    "only text content parts are served",
                                ))
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage {
                role: role.into(),
                content,
            })
        })
        .collect()
}

/// What a checked request becomes.
struct Prepared {
    request: ServeRequest,
    max_price: u64,
    hold: HoldGuard,
    key: ApiKey,
    key_hash: Hash,
    model_name: String,
    stream: bool,
    include_usage: bool,
    receipt: TaskId,
    /// The ledger entry that escrowed the hold, once escrowed.
    escrow_seq: Option<u64>,
}

/// How long a request waits to be prepared (its account's turn, then one of the node's
/// [`PREPARING`] slots) before it is refused with 429.
const PREPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Requests prepared at once: each may wait for the node's template sandbox (a child process
/// rendering a chat, up to the template limits), on a thread of the blocking pool, which the
/// node's other work (task posts, ledger writes) shares.
pub(crate) const PREPARING: usize = 4;

/// A request answered: its key checked first (an unauthenticated request learns nothing
/// about its body), then `prepare` (parsing the body and [`prepare`]) run by [`off_thread`],
/// then the answer sent.
async fn checked_then_prepared(
    node: Arc<Node>,
    headers: &HeaderMap,
    prepare: impl FnOnce(&Arc<Node>, (ApiKey, Hash)) -> Result<Prepared, OaiError> + Send + 'static,
) -> Response {
    let prepared = match bearer(&node, headers) {
        Ok(key) => off_thread(&node, key, prepare).await,
        Err(e) => Err(e),
    };
    respond(node, prepared).await
}

/// `run` for `key`'s account on the blocking pool, one request per account and
/// [`PREPARING`] in all at a time, taken in order of arrival: a flood of requests to a model
/// whose template renders slowly waits here, on no thread, rather than filling the pool.
async fn off_thread(
    node: &Arc<Node>,
    key: (ApiKey, Hash),
    run: impl FnOnce(&Arc<Node>, (ApiKey, Hash)) -> Result<Prepared, OaiError> + Send + 'static,
) -> Result<Prepared, OaiError> {
    let deadline = tokio::time::Instant::now() + PREPARE_WAIT;
    let busy = |why: &str| {
        OaiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            format!("{why} for {}s: try again", PREPARE_WAIT.as_secs()),
        )
    };
    let own = node.preparing_by.of(key.0.account);
    let own = tokio::time::timeout_at(deadline, own.acquire_owned())
        .await
        .map_err(|_| busy("this account's other request was being prepared"))?
        .map_err(OaiError::internal)?;
    let any = tokio::time::timeout_at(deadline, node.preparing.clone().acquire_owned())
        .await
        .map_err(|_| busy("the node was preparing as many requests as it takes"))?
        .map_err(OaiError::internal)?;
    let node = Arc::clone(node);
    tokio::task::spawn_blocking(move || {
        let _permits = (own, any);
        run(&node, key)
    })
    .await
    .unwrap_or_else(|e| Err(OaiError::internal(e)))
}

/// Everything checked before anything runs: the key, the request, the model, a worker, and
/// what it may cost (held while it runs). Nothing is charged for a refused request.
fn prepare(
    node: &Arc<Node>,
    (key, key_hash): (ApiKey, Hash),
    common: &Common,
    prompt: ServePrompt,
    default_tokens: u32,
) -> Result<Prepared, OaiError> {
    let decoding = decoding(common)?;
    let max_new_tokens = max_tokens(common, default_tokens)?;
    let stop = stops(common)?;
    let prompt_bytes = match &prompt {
        ServePrompt::Chat(m) => m.iter().map(|m| m.content.len() + 32).sum::<usize>() + 64,
        ServePrompt::Text(t) => t.len(),
    };
    let prompt_param = match &prompt {
        ServePrompt::Chat(_) => "messages",
        ServePrompt::Text(_) => "prompt",
    };
    if prompt_bytes > MAX_PROMPT_BYTES {
        return Err(OaiError::invalid(
            prompt_param,
            format!("a request's text is at most {MAX_PROMPT_BYTES} bytes"),
        ));
    }
    let serving = &node.serving;
    let blob = serving
        .resolve(&common.model)
        .ok_or_else(|| OaiError::no_model(&common.model))?;
    // What the buyer agreed to: the advertised (lowest) price, unless it names its own cap.
    let cap = match common.max_price_per_token {
        Some(cap) => cap,
        None => serving
            .models()
            .into_iter()
            .find(|m| m.blob == blob)
            .map_or(0, |m| m.price_per_token),
    };
    // Busy or not: a request waits for a slot (serving::QUEUE_WAIT) when all are taken.
    let (route, price) = serving.offered(&blob, None, cap, &[]).ok_or_else(|| {
        OaiError::unavailable(format!(
            "no worker serves this model at {cap} credits per token or less; allow a higher price with max_price_per_token"
        ))
    })?;
    // Every token costs the same; a byte-level tokenizer makes at most one prompt token per
    // byte, so this bounds the answer's cost at the highest price a worker it may go to asks.
    let hold = price
        .checked_mul(prompt_bytes as u64 + u64::from(max_new_tokens))
        .ok_or_else(|| OaiError::invalid("max_tokens", "the request's cost overflows"))?;
    let account = key.account;
    // An account that could not pay is refused before its chat is rendered (the rendering
    // costs the node up to its template limits, and a refusal costs the client nothing).
    let balance = node.ledger.balance(&account).0;
    if balance < hold {
        return Err(OaiError::quota(format!(
            "this request may cost {hold} credits; the account has {balance}"
        )));
    }
    // A prompt the model cannot take is the client's mistake: 400 before anything is held
    // (the nonce, seed and price do not change what the prompt is).
    let probe = ServeRequest {
        buyer: key.account,
        nonce: 0,
        weights: blob,
        model: route.spec.clone(),
        profile: route.offer.profile,
        prompt: prompt.clone(),
        max_new_tokens,
        stop: stop.clone(),
        decoding: decoding.clone(),
        seed: 0,
        price: Credits(0),
        audit: served_audit_policy(),
    };
    // The chat is rendered by the model's template (a client's blob) in the node's sandbox.
    let sandbox: Arc<dyn RenderSandbox> = node.template_sandbox.clone();
    sandboxed(sandbox, || serving.validate(&probe.to_task())).map_err(|e| match e {
        market_compute::ComputeError::Sandbox(_) => OaiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "template_sandbox_unavailable",
            e.to_string(),
        ),
        market_compute::ComputeError::ContextLength { .. } => OaiError {
            param: Some(prompt_param),
            ..OaiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                e.to_string(),
            )
        },
        other => OaiError::invalid(prompt_param, other.to_string()),
    })?;
    // Answers already taken are escrowed: the balance is what is left to spend.
    let balance = node.ledger.balance(&account).0;
    let guard = serving.hold(account, &key.id, hold, |on_account, on_key| {
        let free = balance.saturating_sub(on_account);
        if free < hold {
            return Err(OaiError::quota(format!(
                "this request may cost {hold} credits; the account has {free} free"
            )));
        }
        if let Some(limit) = key.spending_limit {
            if key.spent + on_key + hold > limit {
                return Err(OaiError::quota(format!(
                    "this request may cost {hold} credits, over what is left of the key's limit of {limit}"
                )));
            }
        }
        Ok(())
    })?;
    // Signed messages hold integers below 2^53 (JSON numbers every language reads exactly).
    let random = || -> Result<u64, OaiError> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(OaiError::internal)?;
        Ok(u64::from_le_bytes(b) >> 11)
    };
    let nonce = random()?;
    let seed = match common.seed {
        Some(s) if (0..1 << 53).contains(&s) => s as u64,
        Some(_) => return Err(OaiError::invalid("seed", "a seed is 0 to 2^53 - 1")),
        None => random()?,
    };
    let request = ServeRequest {
        buyer: account,
        nonce,
        weights: blob,
        model: route.spec.clone(),
        profile: route.offer.profile,
        prompt,
        max_new_tokens,
        stop,
        decoding,
        seed,
        price: Credits(hold),
        audit: served_audit_policy(),
    };
    let task = request.to_task();
    let receipt = TaskId(message_id(&task).map_err(OaiError::internal)?);
    Ok(Prepared {
        request,
        max_price: price,
        hold: guard,
        key,
        key_hash,
        model_name: common.model.clone(),
        stream: common.stream.unwrap_or(false),
        include_usage: common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
        receipt,
        escrow_seq: None,
    })
}

/// How hard served answers are audited (written into each request's task).
fn served_audit_policy() -> AuditPolicy {
    let dec = |s: &str| {
        s.parse::<Decimal>()
            .unwrap_or_else(|_| unreachable!("a literal decimal"))
    };
    AuditPolicy {
        detection_target: dec("0.99"),
        assumed_faked_fraction: dec("0.1"),
    }
}

/// Runs a prepared request: the answer streams to the returned receiver; a checked answer's
/// receipt and cost are recorded before the end reaches the client, so a client that leaves
/// early is still charged for what it asked, and never twice.
fn start(node: &Arc<Node>, p: Prepared) -> (mpsc::UnboundedReceiver<Progress>, Meta) {
    let meta = Meta {
        receipt: p.receipt,
        model: p.model_name.clone(),
        created: unix_now(),
        include_usage: p.include_usage,
        chat: matches!(p.request.prompt, ServePrompt::Chat(_)),
    };
    let (inner_tx, mut inner_rx) = mpsc::unbounded_channel();
    let (tx, rx) = mpsc::unbounded_channel();
    let serving = node.serving.clone();
    tokio::spawn(serving.run(p.request, p.max_price, inner_tx));
    let node = node.clone();
    tokio::spawn(async move {
        let hold = p.hold;
        while let Some(progress) = inner_rx.recv().await {
            let progress = match progress {
                Progress::Done(done) => {
                    match record(
                        &node,
                        &done,
                        &p.key,
                        &p.key_hash,
                        &p.model_name,
                        p.escrow_seq,
                    )
                    .await
                    {
                        Ok(()) => Progress::Done(done),
                        Err(e) => Progress::Failed(e),
                    }
                }
                Progress::Failed(why) => {
                    // No answer: the whole hold goes back.
                    if let Err(e) = release_unused(&node, &p.receipt, 0).await {
                        tracing::error!(error = %e, "returning a failed request's hold");
                    }
                    Progress::Failed(why)
                }
                other => other,
            };
            let _ = tx.send(progress);
        }
        drop(hold);
    });
    (rx, meta)
}

/// The cost of an answer: its tokens at the worker's price, never more than was held.
fn cost(done: &Finished) -> u64 {
    let Ok(body) = done.answer.verify() else {
        return 0;
    };
    let tokens = u64::from(body.prompt_tokens) + u64::from(body.completion_tokens);
    done.price_per_token
        .saturating_mul(tokens)
        .min(done.task.price.0)
}

/// Escrows a request's hold from its buyer (`serve_escrow`), noting it first so a crash
/// cannot strand it.
async fn escrow_hold(node: &Node, p: &mut Prepared) -> Result<(), OaiError> {
    let hold = p.request.price.0;
    if hold == 0 {
        return Ok(());
    }
    node.store
        .add_hold(&p.receipt, unix_now())
        .map_err(OaiError::internal)?;
    let escrowed = node
        .append(
            crate::engine::Operation::ServeEscrow { answer: p.receipt },
            market_ledger::EntryKind::Escrow {
                amount: Credits(hold),
                buyer: p.request.buyer,
                spec: None,
                task_id: p.receipt,
            },
        )
        .await;
    match escrowed {
        Ok(a) => {
            p.escrow_seq = Some(a.seq());
            p.hold.escrowed();
            Ok(())
        }
        Err(e) => {
            let _ = node.store.remove_hold(&p.receipt);
            Err(OaiError::quota(format!(
                "this request may cost {hold} credits, more than the account holds: {e}"
            )))
        }
    }
}

/// Returns what a request's escrow holds beyond `keep` to its buyer (`serve_unused`) and
/// forgets the hold. Idempotent.
pub(crate) async fn release_unused(node: &Node, receipt: &TaskId, keep: u64) -> anyhow::Result<()> {
    if let Some(escrow) = node.ledger.escrow_of(receipt) {
        let unused = escrow.remaining.0.saturating_sub(keep);
        if unused > 0 && escrow.remaining.0 == escrow.amount.0 {
            node.append(
                crate::engine::Operation::ServeUnused { answer: *receipt },
                market_ledger::EntryKind::Refund {
                    amount: Credits(unused),
                    buyer: escrow.buyer,
                    task_id: *receipt,
                },
            )
            .await?;
        }
    }
    node.store.remove_hold(receipt)?;
    Ok(())
}

/// Takes a checked answer: its receipt and its place in its worker's batch, then the part of
/// its hold beyond its cost back to the buyer (each step idempotent), before the client sees
/// its end.
async fn record(
    node: &Node,
    done: &Finished,
    key: &ApiKey,
    key_hash: &Hash,
    model_name: &str,
    escrow_seq: Option<u64>,
) -> Result<(), String> {
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "recording a served answer");
        "the answer could not be recorded".to_string()
    };
    let body = done.answer.verify().map_err(|e| internal(&e))?;
    let leaf = message_id(body).map_err(|e| internal(&e))?;
    let cost = cost(done);
    let receipt = ServedReceipt {
        request: done.task.clone(),
        answer: done.answer.clone(),
        record: done.record_json.clone(),
        key: key.id.clone(),
        model_name: model_name.into(),
        cost,
        created: unix_now(),
        escrow_seq,
    };
    node.store
        .record_served(
            &done.receipt,
            &receipt,
            key_hash,
            &body.worker,
            &leaf,
            unix_now(),
        )
        .map_err(|e| internal(&e))?;
    release_unused(node, &done.receipt, cost)
        .await
        .map_err(|e| internal(&e))
}

struct Meta {
    receipt: TaskId,
    model: String,
    created: u64,
    include_usage: bool,
    chat: bool,
}

impl Meta {
    fn id(&self) -> String {
        let prefix = if self.chat { "chatcmpl" } else { "cmpl" };
        format!("{prefix}-{}", self.receipt)
    }

    fn receipt_json(&self) -> serde_json::Value {
        json!({
            "id": self.receipt.to_string(),
            "status": "pending",
            "url": format!("/v1/receipts/{}", self.receipt),
        })
    }

    /// A streamed chunk with `delta` (chat) or `text` (completions).
    fn chunk(&self, text: Option<&str>, finish: Option<&str>, role: bool) -> serde_json::Value {
        if self.chat {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({
                "id": self.id(), "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
        } else {
            json!({
                "id": self.id(), "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}],
            })
        }
    }

    fn usage(done: &Finished) -> serde_json::Value {
        let (p, c) = done
            .answer
            .verify()
            .map_or((0, 0), |b| (b.prompt_tokens, b.completion_tokens));
        json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
    }

    /// The whole answer (not streamed).
    fn whole(&self, done: &Finished) -> serde_json::Value {
        let finish = finish_reason(&done.record.finish);
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": done.record.text},
                   "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": done.record.text, "logprobs": null, "finish_reason": finish})
        };
        json!({
            "id": self.id(),
            "object": if self.chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": Self::usage(done),
            "receipt": self.receipt_json(),
        })
    }
}

fn finish_reason(finish: &str) -> &'static str {
    if finish == "length" {
        "length"
    } else {
        "stop"
    }
}

fn with_receipt(mut response: Response, receipt: &TaskId) -> Response {
    if let Ok(v) = HeaderValue::from_str(&receipt.to_string()) {
        response.headers_mut().insert(RECEIPT_HEADER, v);
    }
    response
}

/// Answers a prepared request, whole or streamed.
async fn answer(node: Arc<Node>, mut p: Prepared) -> Response {
    let stream = p.stream;
    // The hold is escrowed before anything runs: credits that leave the account meanwhile
    // (a task posted, another request) cannot void the answer's payment. Escrow and start run
    // in a task of their own, so a client that leaves meanwhile cannot strand the escrow.
    let n = node.clone();
    let started = tokio::spawn(async move {
        escrow_hold(&n, &mut p).await?;
        Ok::<_, OaiError>(start(&n, p))
    })
    .await;
    let (mut rx, meta) = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => return OaiError::internal(e).into_response(),
    };
    let receipt = meta.receipt;
    if !stream {
        while let Some(progress) = rx.recv().await {
            match progress {
                Progress::Text(_) => {}
                Progress::Done(done) => {
                    return with_receipt(Json(meta.whole(&done)).into_response(), &receipt)
                }
                Progress::Failed(why) => {
                    return OaiError::unavailable(format!("no answer: {why}")).into_response()
                }
            }
        }
        return OaiError::internal("the request ended without an answer").into_response();
    }
    let first = meta.chat.then(|| meta.chunk(None, None, true));
    let events = futures_util::stream::unfold(
        (rx, meta, first, false),
        |(mut rx, meta, mut first, ended)| async move {
            if let Some(chunk) = first.take() {
                return Some((vec![data(&chunk)], (rx, meta, None, false)));
            }
            if ended {
                return None;
            }
            let out = match rx.recv().await {
                Some(Progress::Text(t)) => vec![data(&meta.chunk(Some(&t), None, false))],
                Some(Progress::Done(done)) => {
                    let mut last =
                        meta.chunk(None, Some(finish_reason(&done.record.finish)), false);
                    last["receipt"] = meta.receipt_json();
                    let mut events = vec![data(&last)];
                    if meta.include_usage {
                        let mut usage = meta.chunk(None, None, false);
                        usage["choices"] = json!([]);
                        usage["usage"] = Meta::usage(&done);
                        events.push(data(&usage));
                    }
                    events.push(Event::default().data("[DONE]"));
                    return Some((events, (rx, meta, None, true)));
                }
                Some(Progress::Failed(why)) => {
                    let err = OaiError::unavailable(format!("no answer: {why}"));
                    let body = serde_json::to_value(err.body()).unwrap_or_default();
                    return Some((vec![data(&body)], (rx, meta, None, true)));
                }
                None => return None,
            };
            Some((out, (rx, meta, None, false)))
        },
    );
    let events = futures_util::StreamExt::flat_map(events, |v| {
        futures_util::stream::iter(v.into_iter().map(Ok::<Event, Infallible>))
    });
    with_receipt(
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response(),
        &receipt,
    )
}

fn data(v: &serde_json::Value) -> Event {
    Event::default().data(v.to_string())
}

/// Runs a checked request, or answers why it was refused.
async fn respond(node: Arc<Node>, prepared: Result<Prepared, OaiError>) -> Response {
    match prepared {
        Ok(p) => answer(node, p).await,
        Err(e) => e.into_response(),
    }
}

/// Answers a chat. Streamed (`"stream": true`) as OpenAI's chunks ending with `[DONE]`.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest, security(("apiKey" = [])), responses(
    (status = 200, description = "the answer (JSON), or its chunks (server-sent events) when streamed; the `x-market-receipt` header names its receipt"),
    (status = 400, body = OaiErrorBody), (status = 401, body = OaiErrorBody), (status = 404, description = "no such model", body = OaiErrorBody),
    (status = 413, body = OaiErrorBody), (status = 429, description = "the account or key cannot pay", body = OaiErrorBody), (status = 503, description = "no worker could answer", body = OaiErrorBody)))]
pub(crate) async fn chat_completions(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    checked_then_prepared(node, &headers, move |node, key| {
        let chat: ChatIn = parse(body)?;
        let messages = messages(chat.messages)?;
        prepare(
            node,
            key,
            &chat.common,
            ServePrompt::Chat(messages),
            DEFAULT_CHAT_TOKENS,
        )
    })
    .await
}

/// Completes a prompt (one prompt per request).
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest, security(("apiKey" = [])), responses(
    (status = 200, description = "the completion (JSON), or its chunks (server-sent events) when streamed"),
    (status = 400, body = OaiErrorBody), (status = 401, body = OaiErrorBody), (status = 404, body = OaiErrorBody),
    (status = 413, body = OaiErrorBody), (status = 429, body = OaiErrorBody), (status = 503, body = OaiErrorBody)))]
pub(crate) async fn completions(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    checked_then_prepared(node, &headers, move |node, key| {
        let req: CompletionIn = parse(body)?;
        let prompt = match req.prompt {
            PromptIn::One(p) => p,
            PromptIn::Many(mut v) if v.len() == 1 => v.remove(0),
            PromptIn::Many(_) => return Err(OaiError::invalid("prompt", "one prompt per request")),
        };
        if prompt.is_empty() {
            return Err(OaiError::invalid("prompt", "the prompt is empty"));
        }
        if req.common.stop.is_some() {
            return Err(OaiError::invalid(
                "stop",
                "stop texts are served for chats only (/v1/chat/completions)",
            ));
        }
        prepare(
            node,
            key,
            &req.common,
            ServePrompt::Text(prompt),
            DEFAULT_COMPLETION_TOKENS,
        )
    })
    .await
}

/// A served model.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ModelView {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    /// The GGUF blob served.
    blob: String,
    /// Workers serving it now.
    workers: usize,
    /// The lowest price per token, in credits.
    price_per_token: u64,
    /// The profiles it is served in.
    profiles: Vec<String>,
    /// How its answers are audited.
    audit: ServeAuditPlan,
}

/// How served answers are audited: per worker batch, a share checked, and the chance a batch
/// in which a worker faked a given share of the answers is caught.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ServeAuditPlan {
    /// Answers per batch (a batch also closes `batch_secs` after its first answer).
    batch_answers: usize,
    /// Seconds.
    batch_secs: u64,
    /// Answers of a full batch that are checked.
    audited: usize,
    /// For a worker faking 1%, 10% and 50% of a full batch's answers (at least one): the
    /// chance that batch is caught (the worker slashed, every buyer in it refunded).
    catch_chance: Vec<CatchChance>,
}

/// One line of a plan.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CatchChance {
    /// Share of the batch's answers faked.
    faked_share: f64,
    /// Chance the batch is caught.
    chance: f64,
}

fn serve_audit_plan(config: &crate::config::NodeConfig) -> ServeAuditPlan {
    use crate::serving::audit::{audited, catch_chance};
    let n = config.serve_batch_len();
    let k = audited(n, config.serve_audit_ppm);
    ServeAuditPlan {
        batch_answers: n,
        batch_secs: config.serve_batch_secs,
        audited: k,
        catch_chance: [0.01, 0.1, 0.5]
            .into_iter()
            .map(|share| {
                let faked = ((n as f64 * share).ceil() as usize).clamp(1, n);
                CatchChance {
                    faked_share: share,
                    chance: catch_chance(n, faked, k),
                }
            })
            .collect(),
    }
}

/// The served models.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ModelList {
    object: &'static str,
    data: Vec<ModelView>,
}

/// The models workers serve now (public).
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub(crate) async fn models(State(node): State<Arc<Node>>) -> Json<ModelList> {
    let data = node
        .serving
        .models()
        .into_iter()
        .map(|m| ModelView {
            id: m.id,
            object: "model",
            created: 0,
            owned_by: "market",
            blob: m.blob.to_string(),
            workers: m.workers,
            price_per_token: m.price_per_token,
            profiles: m
                .profiles
                .iter()
                .map(|p| {
                    serde_json::to_value(p)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                })
                .collect(),
            audit: serve_audit_plan(&node.config),
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// A served answer's receipt.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ReceiptView {
    id: String,
    object: &'static str,
    /// `pending` until the answer's batch is audited, then `verified` or `failed`.
    status: &'static str,
    model: String,
    /// The GGUF blob that answered.
    blob: String,
    worker: String,
    /// The request as a one-item inference task (the receipt's id is its message id).
    #[schema(value_type = Object)]
    request: serde_json::Value,
    /// The worker's signed answer: its `output` is the blake3 of `record`.
    #[schema(value_type = Object)]
    answer: serde_json::Value,
    /// The answer record: tokens, their logits, text and how it ended.
    record: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    /// Credits the answer costs.
    cost: u64,
    created: u64,
    /// The batch the answer was audited in, once its worker's batch closed.
    batch: Option<BatchView>,
    /// Ledger entries: the escrow of its hold, the return of the hold beyond its cost, then its
    /// batch's settlement (its worker paid, or its buyers refunded and its worker slashed).
    ledger_entries: Vec<u64>,
}

/// A closed batch of one worker's served answers, as a receipt shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchView {
    /// The Merkle root over the batch's leaves (each the message id of a signed answer).
    root: String,
    /// This answer's leaf: the message id of its signed answer.
    leaf: String,
    /// Its place in the batch, from 0.
    index: u64,
    /// Answers in the batch.
    size: u64,
    /// Sibling hashes from the leaf up (RFC 6962 shape over blake3): the answer is in the
    /// batch whose root was drawn on.
    proof: Vec<String>,
    /// The operator's VRF beacon over the root (hex) and its proof (hex), once drawn: the
    /// audited answers are sampled from it.
    beacon: Option<String>,
    beacon_proof: Option<String>,
    /// Whether this very answer was among those checked.
    audited: bool,
    /// `auditing`, `verified` or `failed`.
    status: String,
    /// Why the batch failed.
    failure: Option<String>,
    /// The verifier's signed check of this answer (`market/v1/AnswerCheck`), when a verifier
    /// checked it and the node accepted the check: a pass, or the failure the node confirmed.
    #[schema(value_type = Option<Object>)]
    check: Option<serde_json::Value>,
}

/// A served answer's receipt, for the account that asked (any of its keys).
#[utoipa::path(get, path = "/v1/receipts/{id}", params(("id" = String, Path, description = "receipt id: 64 lowercase hex digits", pattern = "^[0-9a-f]{64}$")), security(("apiKey" = [])), responses((status = 200, body = ReceiptView), (status = 400, body = OaiErrorBody), (status = 401, body = OaiErrorBody), (status = 404, body = OaiErrorBody)))]
pub(crate) async fn receipt(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ReceiptView>, OaiError> {
    let (key, _) = bearer(&node, &headers)?;
    let id: TaskId = id
        .parse()
        .map_err(|_| OaiError::invalid("id", "a receipt id is 64 lowercase hex digits"))?;
    let not_found = || {
        OaiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            "no such receipt".into(),
        )
    };
    let r = node
        .store
        .served_receipt(&id)
        .map_err(OaiError::internal)?
        .ok_or_else(not_found)?;
    // Another account's receipt is answered as one that does not exist.
    // (The buyer's own account, also after it moved to a new key.)
    if node.current_key(&r.request.buyer) != key.account {
        return Err(not_found());
    }
    let body = r.answer.verify().map_err(OaiError::internal)?;
    let in_batch = node.store.batch_of(&id).map_err(OaiError::internal)?;
    let mut ledger_entries: Vec<u64> = r.escrow_seq.into_iter().collect();
    // The hold beyond the cost, back to the buyer once the answer was recorded.
    let unused = crate::engine::Operation::ServeUnused { answer: id }
        .key()
        .map_err(OaiError::internal)?;
    if let Some(e) = node
        .ledger
        .entry_with_key(&unused)
        .map_err(OaiError::internal)?
    {
        ledger_entries.push(e.body.seq);
    }
    let (status, batch) = match in_batch {
        None => ("pending", None),
        Some((b, index)) => {
            let leaves: Vec<[u8; 32]> = b.answers.iter().map(|(_, l)| l.0).collect();
            let proof = market_protocol::MerkleTree::new(&leaves)
                .proof(index)
                .map(|p| p.path.iter().map(|h| h.to_hex()).collect())
                .unwrap_or_default();
            ledger_entries.extend(&b.ledger);
            let status = match b.status {
                BatchStatus::Auditing => "pending",
                BatchStatus::Verified => "verified",
                BatchStatus::Failed => "failed",
            };
            let view = BatchView {
                root: b.root.to_hex(),
                leaf: b.answers[index as usize].1.to_hex(),
                index,
                size: b.answers.len() as u64,
                proof,
                beacon: b.beacon.map(|(beacon, _)| beacon.0.to_hex()),
                beacon_proof: b.beacon.map(|(_, p)| p.to_hex()),
                audited: b.sampled.contains(&(index as u32)),
                status: serde_json::to_value(b.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                failure: b.failure.clone(),
                check: b
                    .checks
                    .iter()
                    .find(|c| c.body.answer == b.answers[index as usize].1)
                    .and_then(|c| serde_json::to_value(c).ok()),
            };
            (status, Some(view))
        }
    };
    Ok(Json(ReceiptView {
        id: id.to_string(),
        object: "receipt",
        status,
        model: r.model_name.clone(),
        blob: body.model.to_string(),
        worker: body.worker.to_hex(),
        prompt_tokens: body.prompt_tokens,
        completion_tokens: body.completion_tokens,
        request: serde_json::to_value(&r.request).map_err(OaiError::internal)?,
        answer: serde_json::to_value(&r.answer).map_err(OaiError::internal)?,
        record: r.record,
        cost: r.cost,
        created: r.created,
        batch,
        ledger_entries,
    }))
}
