//! A typed Rust client for the node's API, with request signing. Used by the tests, the devnet
//! and the `market-node task` subcommands.

use std::time::Duration;

use market_protocol::{AccountId, BlobId, Identity, Signed, TaskId, TaskSpec};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::{sign_headers, sign_headers_for_digest, unix_now};
use crate::model::TaskView;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached, or the connection broke.
    #[error("talking to the node: {0}")]
    Http(String),
    /// Something on this machine failed (a file to read or write).
    #[error("{0}")]
    Local(String),
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

impl From<reqwest::Error> for ClientError {
    /// The whole chain in one message ("error sending request" alone hides "connection
    /// refused"), and no source, so it is not printed twice.
    fn from(e: reqwest::Error) -> Self {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        Self::Http(text)
    }
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
        Self::answer(resp).await
    }

    /// The body of a successful answer, or the node's error.
    async fn answer<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
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

    /// Moves the client's account to `new_key`: the client's key signs the rotation, the new
    /// key its acceptance. Afterwards this client's key can no longer act.
    pub async fn rotate(&self, new_key: &Identity) -> Result<Value, ClientError> {
        let old = self.identity.as_ref().ok_or(ClientError::NoKey)?;
        let body_error = |e: &dyn std::fmt::Display| ClientError::Body(e.to_string());
        let rotation = Signed::sign(
            market_protocol::KeyRotation {
                version: market_protocol::Version::CURRENT,
                from: old.account(),
                to: new_key.account(),
            },
            old,
        )
        .map_err(|e| body_error(&e))?;
        let acceptance = Signed::sign(
            market_protocol::RotationAcceptance {
                version: market_protocol::Version::CURRENT,
                rotation: rotation.id().map_err(|e| body_error(&e))?,
                to: new_key.account(),
            },
            new_key,
        )
        .map_err(|e| body_error(&e))?;
        let body = serde_json::to_vec(&serde_json::json!({
            "rotation": rotation,
            "acceptance": acceptance,
        }))
        .map_err(|e| body_error(&e))?;
        self.send(
            reqwest::Method::POST,
            &format!("/v1/accounts/{}/rotation", old.account()),
            body,
            true,
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

    /// Uploads the file at `path` without holding it in memory: it is hashed once (the id the
    /// signature covers), then streamed. `on_progress` is told the bytes sent so far.
    pub async fn upload_file(
        &self,
        path: &std::path::Path,
        on_progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<BlobId, ClientError> {
        let io = |e: std::io::Error| ClientError::Local(format!("{}: {e}", path.display()));
        // Only a regular file: a device or a pipe would be read forever.
        if !std::fs::metadata(path).map_err(io)?.is_file() {
            return Err(ClientError::Local(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let (id, size) = {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || -> std::io::Result<(BlobId, u64)> {
                let mut hasher = blake3::Hasher::new();
                let size = std::io::copy(&mut std::fs::File::open(&path)?, &mut hasher)?;
                Ok((
                    BlobId(market_protocol::Hash(*hasher.finalize().as_bytes())),
                    size,
                ))
            })
            .await
            .map_err(|e| ClientError::Body(e.to_string()))?
            .map_err(io)?
        };
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let mut sent = 0u64;
        let stream =
            futures_util::StreamExt::map(tokio_util::io::ReaderStream::new(file), move |chunk| {
                if let Ok(c) = &chunk {
                    sent += c.len() as u64;
                    on_progress(sent);
                }
                chunk
            });
        let path_and_query = format!("/v1/blobs?expected={id}");
        let signer = self.identity.as_ref().ok_or(ClientError::NoKey)?;
        let mut req = self
            .http
            .post(format!("{}{path_and_query}", self.base))
            .header("content-type", "application/octet-stream")
            .header("content-length", size);
        for (k, v) in sign_headers_for_digest(
            signer,
            "POST",
            &path_and_query,
            &id.0,
            unix_now(),
            &nonce()?,
        ) {
            req = req.header(k, v);
        }
        let resp = req.body(reqwest::Body::wrap_stream(stream)).send().await?;
        let v: Value = Self::answer(resp).await?;
        match v["id"].as_str().and_then(|s| s.parse::<BlobId>().ok()) {
            Some(got) if got == id => Ok(id),
            _ => Err(ClientError::Body(format!(
                "the node stored another blob than {id}: {v}"
            ))),
        }
    }

    /// Downloads blob `id` into the new file `out`: streamed into a temporary file created
    /// beside it (exclusively, so a planted file or link is never followed), at most the
    /// length the node announced, and published at `out` only once its bytes hash to `id`,
    /// never over anything already there. `on_progress` is told the bytes received and the
    /// total.
    pub async fn download_blob(
        &self,
        id: &BlobId,
        out: &std::path::Path,
        on_progress: impl Fn(u64, Option<u64>),
    ) -> Result<u64, ClientError> {
        use std::io::Write;
        let local = |e: std::io::Error| ClientError::Local(format!("{}: {e}", out.display()));
        if out.symlink_metadata().is_ok() {
            return Err(ClientError::Local(format!(
                "{} exists: choose a new file",
                out.display()
            )));
        }
        let path = format!("/v1/blobs/{id}");
        let signer = self.identity.as_ref().ok_or(ClientError::NoKey)?;
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in sign_headers(signer, "GET", &path, b"", unix_now(), &nonce()?) {
            req = req.header(k, v);
        }
        let mut resp = req.send().await?;
        if !resp.status().is_success() {
            return Err(Self::answer::<Value>(resp)
                .await
                .err()
                .unwrap_or_else(|| ClientError::Body("the node refused the download".into())));
        }
        let total = resp
            .content_length()
            .ok_or_else(|| ClientError::Body("the node did not say how long the blob is".into()))?;
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        let mut file = tempfile::Builder::new()
            .prefix(".market-download-")
            .tempfile_in(dir)
            .map_err(local)?;
        let mut hasher = blake3::Hasher::new();
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            got += chunk.len() as u64;
            if got > total {
                return Err(ClientError::Body(format!(
                    "the node sent more than the {total} bytes it announced for blob {id}: discarded"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(local)?;
            on_progress(got, Some(total));
        }
        file.as_file().sync_all().map_err(local)?;
        let hash = market_protocol::Hash(*hasher.finalize().as_bytes());
        if got != total || hash != id.0 {
            return Err(ClientError::Body(format!(
                "the node sent {got} bytes (of {total} announced) that hash to {hash}, not blob {id}: discarded"
            )));
        }
        file.persist_noclobber(out).map_err(|e| local(e.error))?;
        Ok(got)
    }

    /// A page of tasks in arrival order (`buyer`, `state` filter; `after` continues a page).
    pub async fn tasks(
        &self,
        buyer: Option<&AccountId>,
        state: Option<&str>,
        after: Option<u64>,
    ) -> Result<Value, ClientError> {
        let mut query = vec!["limit=100".to_owned()];
        if let Some(b) = buyer {
            query.push(format!("buyer={b}"));
        }
        if let Some(s) = state {
            query.push(format!("state={s}"));
        }
        if let Some(a) = after {
            query.push(format!("after={a}"));
        }
        self.send(
            reqwest::Method::GET,
            &format!("/v1/tasks?{}", query.join("&")),
            Vec::new(),
            false,
        )
        .await
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
