//! Exports: JSON lines, one entry per line, checked with no database at all.
//!
//! An export is the chain from genesis, each line the entry's canonical JSON followed by `\n`.
//! [`verify_export`] applies every check [`crate::Ledger::verify`] applies to the chain itself,
//! replays the operations to recompute balances, escrows, stakes and reputation, and can check
//! that an operator's earlier signed head is a prefix. Errors name the first bad entry by seq
//! and line number.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use market_protocol::Hash;

use crate::entry::{DecodeError, MAX_ENTRY_BYTES};
use crate::error::LedgerError;
use crate::head::{check_prefix, SignedHead};
use crate::verify::{Broken, Checker, Fault, Raw, Summary};

/// What a verified export adds up to.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The chain's head, ledger key and replayed state.
    pub summary: Summary,
    /// Lines read.
    pub lines: u64,
}

/// Verifies the export file at `path` (see [`verify_export`]).
pub fn verify_export_file(
    path: &Path,
    signed_head: Option<&SignedHead>,
) -> Result<ExportReport, LedgerError> {
    let file = File::open(path).map_err(|source| LedgerError::Io {
        path: path.to_owned(),
        source,
    })?;
    verify_export(BufReader::new(file), path, signed_head)
}

/// Verifies an export read from `input` (`label` names it in errors): the whole chain from
/// genesis, and `signed_head`, when given, as a prefix of it.
pub fn verify_export(
    input: impl BufRead,
    label: &Path,
    signed_head: Option<&SignedHead>,
) -> Result<ExportReport, LedgerError> {
    verify_export_with(input, label, signed_head, |_| Ok(()))
}

/// [`verify_export`], calling `in_order` on each entry in chain order once its signature, link
/// and key are checked and before it is replayed (a fault it returns fails the export there).
pub(crate) fn verify_export_with(
    input: impl BufRead,
    label: &Path,
    signed_head: Option<&SignedHead>,
    mut in_order: impl FnMut(&crate::entry::Decoded) -> Result<(), Fault>,
) -> Result<ExportReport, LedgerError> {
    let watch = signed_head.map(|h| h.body.seq);
    let mut watched: Option<Hash> = None;
    let mut lines = Lines {
        input,
        label,
        read: 0,
    };
    let summary = Checker::from_genesis(true).run(&mut lines, &|_| Ok(()), |d| {
        if Some(d.entry.body.seq) == watch {
            watched = Some(d.hash);
        }
        in_order(d)
    })?;
    if let Some(signed) = signed_head {
        check_prefix(signed, summary.ledger, summary.head, |_| watched)?;
    }
    Ok(ExportReport {
        summary,
        lines: lines.read,
    })
}

/// The lines of an export, numbered from 1.
struct Lines<'a, R> {
    input: R,
    label: &'a Path,
    read: u64,
}

impl<R: BufRead> Iterator for Lines<'_, R> {
    type Item = Result<Raw, LedgerError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Entry n is expected on line n + 1.
        let line = self.read + 1;
        match read_line(&mut self.input, self.label, line, self.read) {
            Ok(None) => None,
            Ok(Some(bytes)) => {
                self.read = line;
                Some(Ok(Raw {
                    stored: None,
                    line: Some(line),
                    bytes,
                }))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// Reads one `\n`-terminated line of at most [`MAX_ENTRY_BYTES`], without the newline; `None`
/// at the end of input.
fn read_line(
    input: &mut impl BufRead,
    label: &Path,
    line: u64,
    seq: u64,
) -> Result<Option<Vec<u8>>, LedgerError> {
    let limit = MAX_ENTRY_BYTES + 1;
    let mut bytes = read_until_newline(input, limit).map_err(|source| LedgerError::Io {
        path: PathBuf::from(label),
        source,
    })?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let broken = |fault| Broken {
        seq,
        line: Some(line),
        fault,
    };
    if bytes.pop() != Some(b'\n') {
        let fault = if bytes.len() + 1 >= limit {
            Fault::Decode(DecodeError::TooLarge(bytes.len() + 1))
        } else {
            Fault::Decode(DecodeError::Json("the last line has no newline".into()))
        };
        return Err(broken(fault).into());
    }
    Ok(Some(bytes))
}

/// Reads up to and including the next `\n`, at most `limit` bytes. The buffer doubles as
/// `read_until` would, but never past `limit`: a line of 4 MiB and more costs 4 MiB + 1, not
/// the 8 MiB that one more doubling would reserve.
fn read_until_newline(input: &mut impl BufRead, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        let room = &available[..available.len().min(limit - bytes.len())];
        let (take, done) = match room.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (room.len(), false),
        };
        if bytes.capacity() < bytes.len() + take {
            let want = (bytes.capacity() * 2).max(bytes.len() + take).min(limit);
            bytes.reserve_exact(want - bytes.len());
        }
        bytes.extend_from_slice(&room[..take]);
        input.consume(take);
        if done {
            break;
        }
    }
    Ok(bytes)
}
