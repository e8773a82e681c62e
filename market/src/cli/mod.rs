//! The buyer's and participant's terminal commands of `market-node`: blobs, tasks, accounts.
//! Each talks to a node's REST API with [`crate::client::Client`]; whatever the node says about
//! money is checked against its signed ledger here ([`account`]).

pub mod account;
pub mod blob;
pub mod key;
pub mod task;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use market_protocol::keyfile::load_identity;
use market_protocol::AccountId;

use crate::client::Client;

/// Where the node is, and whose key signs.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The node's URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub node: String,
    /// Your key file (made with `market-node key`).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

impl Connection {
    /// A client signing with the key file, if one was given.
    pub fn client(&self) -> Result<Client> {
        let identity = self
            .key
            .as_deref()
            .map(|k| load_identity(k).with_context(|| format!("loading key {}", k.display())))
            .transpose()?;
        Ok(Client::new(&self.node, identity))
    }

    /// A client that must sign (the command acts for an account).
    pub fn signing_client(&self) -> Result<Client> {
        anyhow::ensure!(
            self.key.is_some(),
            "this command acts for your account: give --key FILE"
        );
        self.client()
    }

    /// The account named by `--account`, or else the key file's.
    pub fn account(&self, account: Option<AccountId>) -> Result<AccountId> {
        match (account, &self.key) {
            (Some(a), _) => Ok(a),
            (None, Some(k)) => Ok(load_identity(k)
                .with_context(|| format!("loading key {}", k.display()))?
                .account()),
            (None, None) => anyhow::bail!("name the account: --account ID or --key FILE"),
        }
    }
}

/// A byte-counting progress bar on stderr (hidden when stderr is not a terminal).
pub fn bytes_bar(len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg} {spinner} {bytes} ({bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(what.to_owned());
    bar
}
