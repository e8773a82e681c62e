//! A typed Rust client for the node's API, with request signing. Used by the tests, the devnet
//! and the `market-node task` subcommands.

use std::time::Duration;

use market_protocol::{AccountId, BlobId, Identity, Signed, TaskId, TaskSpec};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::{sign_headers, unix_now};
use crate::model::TaskView;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot reach the node: {0}")]
    Http(#[from] reqwest::Error),
    /// The node answered with an error.
    #[error("the node answered {status}: {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// The call needs a key and the client has none.
    #[error("this call must be signed; give the client a key")]
    NoKey,
    /// A body could not be encoded or decoded.
    #[error("bad body: {0}")]
    Body(String),
}

/// The client.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    identity: Option<Identity>,
}

fn nonce() -> Result<String, ClientError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| ClientError::Body(e.to_string()))?;
    Ok(hex::encode(bytes))
}

impl Client {
    /// A client for the node at `base` (e.g. `http://127.0.0.1:8080`), signing with `identity`.
    pub fn new(base: impl Into<String>, identity: Option<Identity>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            identity,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        sign: bool,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if sign {
            let id = self.identity.as_ref().ok_or(ClientError::NoKey)?;
            for (k, v) in sign_headers(id, method.as_str(), path, &body, unix_now(), &nonce()?) {
                req = req.header(k, v);
            }
        }
        let resp = req
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: v["error"]["code"].as_str().unwrap_or("unknown").into(),
                message: v["error"]["message"]
                    .as_str()
                    .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), Into::into),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Body(e.to_string()))
    }

    /// Registers the client's account.
    pub async fn register(&self) -> Result<Value, ClientError> {
        self.send(reqwest::Method::POST, "/v1/accounts", Vec::new(), true)
            .await
    }

    /// An account's balance, escrow, stake and reputation.
    pub async fn account(&self, account: &AccountId) -> Result<Value, ClientError> {
        self.send(
            reqwest::Method::GET,
            &format!("/v1/accounts/{account}"),
            Vec::new(),
            false,
        )
        .await
    }

    /// The workers the node can assign to now, with stake, reputation and record.
    pub async fn workers(&self) -> Result<Vec<Value>, ClientError> {
        self.send(reqwest::Method::GET, "/v1/workers", Vec::new(), false)
            .await
    }

    /// The verifiers the node can draw now.
    pub async fn verifiers(&self) -> Result<Vec<Value>, ClientError> {
        self.send(reqwest::Method::GET, "/v1/verifiers", Vec::new(), false)
            .await
    }

    /// Posts a signed task.
    pub async fn post_task(&self, task: &Signed<TaskSpec>) -> Result<TaskView, ClientError> {
        let body = serde_json::to_vec(task).map_err(|e| ClientError::Body(e.to_string()))?;
        self.send(reqwest::Method::POST, "/v1/tasks", body, true)
            .await
    }

    /// Signs `spec` with the client's key (as its buyer) and posts it.
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskView, ClientError> {
        let id = self.identity.as_ref().ok_or(ClientError::NoKey)?;
        let signed = Signed::sign(spec, id).map_err(|e| ClientError::Body(e.to_string()))?;
        self.post_task(&signed).await
    }

    /// A task's public state.
    pub async fn task(&self, id: &TaskId) -> Result<TaskView, ClientError> {
        self.send(
            reqwest::Method::GET,
            &format!("/v1/tasks/{id}"),
            Vec::new(),
            false,
        )
        .await
    }

    /// A settled task's results (the buyer's key only).
    pub async fn result(&self, id: &TaskId) -> Result<Value, ClientError> {
        self.send(
            reqwest::Method::GET,
            &format!("/v1/tasks/{id}/result"),
            Vec::new(),
            true,
        )
        .await
    }

    /// Cancels a queued task.
    pub async fn cancel(&self, id: &TaskId) -> Result<TaskView, ClientError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/tasks/{id}/cancel"),
            Vec::new(),
            true,
        )
        .await
    }

    /// Uploads a blob, naming its id up front so the node checks the signature before reading.
    pub async fn upload(&self, bytes: Vec<u8>) -> Result<BlobId, ClientError> {
        let id = BlobId::of(&bytes);
        let v: Value = self
            .send(
                reqwest::Method::POST,
                &format!("/v1/blobs?expected={id}"),
                bytes,
                true,
            )
            .await?;
        v["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Body("no blob id".into()))
    }

    /// Creates an API key for OpenAI-compatible clients; the answer holds its secret (`key`),
    /// shown only this once.
    pub async fn create_key(
        &self,
        name: &str,
        spending_limit: Option<u64>,
    ) -> Result<Value, ClientError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "name": name,
            "spending_limit": spending_limit,
        }))
        .map_err(|e| ClientError::Body(e.to_string()))?;
        self.send(reqwest::Method::POST, "/v1/keys", body, true)
            .await
    }

    /// The account's API keys (without secrets).
    pub async fn keys(&self) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, "/v1/keys", Vec::new(), true)
            .await
    }

    /// Revokes one of the account's API keys.
    pub async fn revoke_key(&self, id: &str) -> Result<Value, ClientError> {
        self.send(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{id}"),
            Vec::new(),
            true,
        )
        .await
    }

    /// The signed ledger head.
    pub async fn ledger_head(&self) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, "/v1/ledger/head", Vec::new(), false)
            .await
    }

    /// The ledger export (JSON lines).
    pub async fn ledger_export(&self) -> Result<Vec<u8>, ClientError> {
        Ok(self
            .http
            .get(format!("{}/v1/ledger/export", self.base))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?
            .to_vec())
    }

    /// Polls a task until it is settled, rejected or cancelled.
    pub async fn wait(
        &self,
        id: &TaskId,
        timeout: Duration,
        mut on_update: impl FnMut(&TaskView),
    ) -> Result<TaskView, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let t = self.task(id).await?;
            on_update(&t);
            if t.state.is_final() || tokio::time::Instant::now() > deadline {
                return Ok(t);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
