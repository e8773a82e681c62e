//! The ledger's export verifier for browsers. The dashboard hands it the node's export (and,
//! optionally, the node's signed head) and shows what it says, so a visitor checks the ledger on
//! their own machine instead of trusting the node that serves the page. It is the very code
//! `market-ledger verify --export` runs ([`market_ledger::verify_export`]), compiled to
//! `wasm32-unknown-unknown` without sled or threads.
//!
//! The interface is plain WebAssembly, no bindings generator: the page calls `alloc(len)`,
//! copies the input into the module's memory at the returned offset, calls `verify(ptr, len)`
//! and reads the JSON answer from the offset and length packed in the returned `u64`
//! (`offset << 32 | length`). The input is the signed head's JSON on the first line (or an
//! empty first line for none), then the export's lines.

use std::cell::RefCell;
use std::path::Path;

use market_ledger::protocol::AccountId;
use market_ledger::{verify_export, LedgerError, SignedHead};
use serde_json::{json, Value};

thread_local! {
    /// The last answer, kept alive until the next call so the page can read it.
    static ANSWER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Splits off the first line of `input`: (that line, the rest).
fn first_line(input: &[u8]) -> (&[u8], &[u8]) {
    match input.iter().position(|b| *b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    }
}

/// Reads the signed head from its line: `None` for a blank line.
fn head_of(line: &[u8]) -> Result<Option<SignedHead>, Value> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(line).map(Some).map_err(
        |e| json!({"verified": false, "error": format!("the signed head is not valid: {e}")}),
    )
}

/// What the page shows of a failed check: the first bad entry (its sequence number and line)
/// when the chain is broken.
fn failure(e: LedgerError) -> Value {
    match e {
        LedgerError::Broken(b) => json!({
            "verified": false,
            "error": b.to_string(),
            "seq": b.seq,
            "line": b.line,
        }),
        e => json!({"verified": false, "error": e.to_string()}),
    }
}

/// Verifies `input` (a head line, then the export) and says what it found, as JSON:
/// `{"verified": true, "entries", "ledger", "head": {"seq", "hash"}, "supply", "signed_head_seq"}`
/// or `{"verified": false, "error", "seq", "line"}` naming the first bad entry.
pub fn verify_input(input: &[u8]) -> Value {
    let (head_line, export) = first_line(input);
    let head = match head_of(head_line) {
        Ok(h) => h,
        Err(answer) => return answer,
    };
    match verify_export(export, Path::new("export"), head.as_ref()) {
        Ok(report) => json!({
            "verified": true,
            "entries": report.lines,
            "ledger": report.summary.ledger,
            "head": report.summary.head,
            "supply": report.summary.state.supply().0,
            "signed_head_seq": head.map(|h| h.body.seq),
        }),
        Err(e) => failure(e),
    }
}

/// Statements from `input` (a head line, then account ids separated by spaces on the second
/// line, then the export), in one pass after the same checks as [`verify_input`]:
/// `{"verified": true, "statements": [{"statement": {...}, "totals": {...}}, ...]}` in the
/// order of the ids (the shapes of [`market_ledger::Statement`] and [`market_ledger::Totals`],
/// as `market-worker statement --json` prints them), or the failure.
pub fn statement_input(input: &[u8]) -> Value {
    let (head_line, rest) = first_line(input);
    let (account_line, export) = first_line(rest);
    let head = match head_of(head_line) {
        Ok(h) => h,
        Err(answer) => return answer,
    };
    let accounts: Option<Vec<AccountId>> = std::str::from_utf8(account_line)
        .ok()
        .and_then(|l| l.split_ascii_whitespace().map(|a| a.parse().ok()).collect());
    let Some(accounts) = accounts.filter(|a| !a.is_empty()) else {
        return json!({"verified": false, "error": "the second line is not a list of account ids"});
    };
    match market_ledger::statements(export, Path::new("export"), &accounts, head.as_ref()) {
        Ok(all) => json!({
            "verified": true,
            "statements": all
                .iter()
                .map(|s| json!({"totals": s.totals(), "statement": s}))
                .collect::<Vec<_>>(),
        }),
        Err(e) => failure(e),
    }
}
/// The blake3 hash of `input` (a blob's id): `{"blake3": "<64 hex digits>"}`. The page checks
/// a downloaded result against the id the node and the ledger name before it offers it.
pub fn hash_input(input: &[u8]) -> Value {
    json!({"blake3": market_ledger::protocol::Hash::of(input).to_string()})
}

/// Reserves `len` bytes in the module's memory for the page to copy its input into.
#[no_mangle]
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    let mut buf = Vec::<u8>::with_capacity(len);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr
}

/// Runs `answer` on the `len` bytes at `ptr` and keeps its JSON for the page to read.
///
/// # Safety
/// As [`verify`].
unsafe fn answer_with(ptr: *mut u8, len: usize, answer: fn(&[u8]) -> Value) -> u64 {
    // SAFETY: `alloc(len)` made this allocation with capacity `len`, the caller wrote every
    // byte of it and hands it over; rebuilding the Vec frees it when done.
    let input = unsafe { Vec::from_raw_parts(ptr, len, len) };
    let bytes = serde_json::to_vec(&answer(&input)).unwrap_or_default();
    ANSWER.with(|a| {
        *a.borrow_mut() = bytes;
        let a = a.borrow();
        ((a.as_ptr() as u64) << 32) | a.len() as u64
    })
}

/// Verifies the `len` bytes at `ptr` (from [`alloc`], filled by the page, and freed here) and
/// returns the answer's offset and length as `offset << 32 | length`.
///
/// # Safety
/// `ptr` must come from `alloc(len)` with this `len`, and the page must have written all `len`
/// bytes; it must not be used again.
#[no_mangle]
pub unsafe extern "C" fn verify(ptr: *mut u8, len: usize) -> u64 {
    // SAFETY: the caller keeps `verify`'s contract, which is `answer_with`'s.
    unsafe { answer_with(ptr, len, verify_input) }
}

/// [`statement_input`] over the `len` bytes at `ptr`, handed over as to [`verify`].
///
/// # Safety
/// As [`verify`].
#[no_mangle]
pub unsafe extern "C" fn statement(ptr: *mut u8, len: usize) -> u64 {
    // SAFETY: the caller keeps `verify`'s contract, which is `answer_with`'s.
    unsafe { answer_with(ptr, len, statement_input) }
}

/// [`hash_input`] over the `len` bytes at `ptr`, handed over as to [`verify`].
///
/// # Safety
/// As [`verify`].
#[no_mangle]
pub unsafe extern "C" fn hash(ptr: *mut u8, len: usize) -> u64 {
    // SAFETY: the caller keeps `verify`'s contract, which is `answer_with`'s.
    unsafe { answer_with(ptr, len, hash_input) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_export() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../spec/vectors/export.jsonl"
        ))
        .expect("the spec's export vector")
    }

    #[test]
    fn the_real_export_verifies_and_a_tampered_one_names_its_bad_entry() {
        let export = vector_export();
        let mut input = b"\n".to_vec();
        input.extend_from_slice(&export);
        let ok = verify_input(&input);
        assert_eq!(ok["verified"], true, "{ok}");
        assert_eq!(ok["entries"], 93);

        let text = String::from_utf8(export).expect("utf-8");
        let line = text.lines().nth(5).expect("line 6");
        let forged_line = line.replacen("\"amount\":", "\"amount\":1", 1);
        assert_ne!(line, forged_line);
        let forged = format!("\n{}", text.replacen(line, &forged_line, 1));
        let bad = verify_input(forged.as_bytes());
        assert_eq!(bad["verified"], false, "{bad}");
        assert_eq!(bad["seq"], 5, "{bad}");
        assert_eq!(bad["line"], 6, "{bad}");
    }

    #[test]
    fn a_statement_is_checked_and_sums_to_the_balance() {
        let export = String::from_utf8(vector_export()).expect("utf-8");
        // The first mint's recipient (line 2 of the spec's export).
        let account = "c9ac04296b6035cfa5c0acbe33253bfbb5375c462730752aec21507fbef210fc";
        let answer = statement_input(format!("\n{account}\n{export}").as_bytes());
        assert_eq!(answer["verified"], true, "{answer}");
        let one = &answer["statements"][0];
        let lines = one["statement"]["lines"].as_array().expect("lines");
        assert!(!lines.is_empty());
        let sum: i64 = lines
            .iter()
            .map(|l| l["balance"].as_i64().expect("delta"))
            .sum();
        assert_eq!(Some(sum), one["statement"]["balance"].as_i64(), "{answer}");
        // Several accounts in one pass: each the same as alone.
        let operator = "89fd376f66b694c01e55dc604811668f8fc475f86186940cb92ac39f113149bc";
        let both = statement_input(format!("\n{operator} {account}\n{export}").as_bytes());
        assert_eq!(both["statements"][1], answer["statements"][0]);
        let alone = statement_input(format!("\n{operator}\n{export}").as_bytes());
        assert_eq!(both["statements"][0], alone["statements"][0]);

        let forged = export.replacen("\"amount\":500", "\"amount\":5000", 1);
        let bad = statement_input(format!("\n{account}\n{forged}").as_bytes());
        assert_eq!(bad["verified"], false, "{bad}");
        assert_eq!(bad["seq"], 1, "{bad}");
        let no_account = statement_input(format!("\nnot-an-account\n{export}").as_bytes());
        assert_eq!(no_account["verified"], false, "{no_account}");
    }

    #[test]
    fn a_blob_hashes_to_its_id() {
        // blake3 of nothing, as in the blake3 test vectors.
        assert_eq!(
            hash_input(b"")["blake3"],
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn the_byte_interface_round_trips() {
        let input = b"\nnot an export\n".to_vec();
        let ptr = alloc(input.len());
        // SAFETY: `alloc` returned room for `input.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(input.as_ptr(), ptr, input.len()) };
        // SAFETY: filled above, handed over once.
        let packed = unsafe { verify(ptr, input.len()) };
        let (at, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        let (answer, address) = ANSWER.with(|a| (a.borrow().clone(), a.borrow().as_ptr() as usize));
        assert_eq!(answer.len(), len);
        // (On wasm32 an address is 32 bits; here only its low half travels.)
        assert_eq!(address & 0xffff_ffff, at & 0xffff_ffff);
        let v: Value = serde_json::from_slice(&answer).expect("json");
        assert_eq!(v["verified"], false);
    }
}
