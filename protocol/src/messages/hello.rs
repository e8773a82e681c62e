//! [`Hello`]: how a worker or verifier introduces itself to a market node over the network.

use serde::{Deserialize, Serialize};

use super::Version;
use crate::keys::AccountId;
use crate::numbers::Credits;
use crate::signed::Message;

/// What a participant does on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs tasks.
    Worker,
    /// Audits results.
    Verifier,
}

/// What a participant can run, as it measured itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Execution profiles it runs: `repro`, `native`.
    pub profiles: Vec<String>,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Memory it offers to tasks, in bytes.
    pub memory_bytes: u64,
    /// Disk space it offers to tasks' files (inputs, checkpoints, results), in bytes.
    pub disk_bytes: u64,
    /// Training steps per second of the reference benchmark task, times 1000.
    pub steps_per_ksec: u64,
}

impl Capabilities {
    /// Whether it says it runs tasks of `profile` (a node hands a participant only the tasks
    /// and audits it can execute).
    pub fn runs(&self, profile: crate::ExecutionProfile) -> bool {
        self.profiles.iter().any(|p| p == profile.name())
    }

    /// The memory and disk it offers.
    pub fn offers(&self) -> Resources {
        Resources {
            memory_bytes: self.memory_bytes,
            disk_bytes: self.disk_bytes,
        }
    }
}

/// What running a task takes of a machine, as the node estimates it when the task is posted
/// (`COMPUTE.md`, "Resources").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Peak memory of the run, in bytes.
    pub memory_bytes: u64,
    /// Disk taken by its inputs and its bundle, in bytes.
    pub disk_bytes: u64,
}

/// A participant's signed introduction. The node accepts it only from the peer whose key
/// signed it (the connection is authenticated with that same key), so a participant cannot
/// speak for another account; `node` names the node it is meant for, so a hello shown to one
/// node is refused by any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol version.
    pub version: Version,
    /// The participant (also its libp2p peer id).
    pub account: AccountId,
    /// The node it is addressed to.
    pub node: AccountId,
    /// Worker or verifier.
    pub role: Role,
    /// What it can do.
    pub capabilities: Capabilities,
    /// The stake it wants held while it participates (taken from its balance).
    pub stake: Credits,
    /// A number the participant chooses per process start (informational, for logs).
    pub session: u64,
}

impl Message for Hello {
    const DOMAIN: &'static str = "market/v1/Hello";
    fn author(&self) -> Option<AccountId> {
        Some(self.account)
    }
}

impl Resources {
    /// Whether an offer of `self` covers `needs` (a node hands a worker only tasks it can
    /// hold, and an audit only to a verifier with the memory to re-execute it).
    pub fn covers(&self, needs: &Resources) -> bool {
        self.memory_bytes >= needs.memory_bytes && self.disk_bytes >= needs.disk_bytes
    }
}
