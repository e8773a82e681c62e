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

use market_ledger::{verify_export, LedgerError, SignedHead};
use serde_json::{json, Value};

thread_local! {
    /// The last answer, kept alive until the next call so the page can read it.
    static ANSWER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Verifies `input` (a head line, then the export) and says what it found, as JSON:
/// `{"verified": true, "entries", "ledger", "head": {"seq", "hash"}, "supply", "signed_head_seq"}`
/// or `{"verified": false, "error", "seq", "line"}` naming the first bad entry.
pub fn verify_input(input: &[u8]) -> Value {
    let (head_line, export) = match input.iter().position(|b| *b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    let head: Option<SignedHead> = if head_line.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice(head_line) {
            Ok(h) => Some(h),
            Err(e) => {
                return json!({"verified": false, "error": format!("the signed head is not valid: {e}")})
            }
        }
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
        Err(LedgerError::Broken(b)) => json!({
            "verified": false,
            "error": b.to_string(),
            "seq": b.seq,
            "line": b.line,
        }),
        Err(e) => json!({"verified": false, "error": e.to_string()}),
    }
}

/// Reserves `len` bytes in the module's memory for the page to copy its input into.
#[no_mangle]
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    let mut buf = Vec::<u8>::with_capacity(len);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr
}

/// Verifies the `len` bytes at `ptr` (from [`alloc`], filled by the page, and freed here) and
/// returns the answer's offset and length as `offset << 32 | length`.
///
/// # Safety
/// `ptr` must come from `alloc(len)` with this `len`, and the page must have written all `len`
/// bytes; it must not be used again.
#[no_mangle]
pub unsafe extern "C" fn verify(ptr: *mut u8, len: usize) -> u64 {
    // SAFETY: `alloc(len)` made this allocation with capacity `len`, the caller wrote every
    // byte of it and hands it over; rebuilding the Vec frees it when done.
    let input = unsafe { Vec::from_raw_parts(ptr, len, len) };
    let answer = serde_json::to_vec(&verify_input(&input)).unwrap_or_default();
    ANSWER.with(|a| {
        *a.borrow_mut() = answer;
        let a = a.borrow();
        ((a.as_ptr() as u64) << 32) | a.len() as u64
    })
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
