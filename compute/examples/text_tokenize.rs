//! Throughput of a text dataset's tokenization (`data::text::tokenize`, spec/COMPUTE.md
//! section 3) with SmolLM2's tokenizer, against the same tokenizer run once over the whole text
//! (the baseline: no pieces, one call), on real text and on texts shaped to make pieces costly.
//! Run by the node when a task is posted and by every worker and verifier of it. A second
//! column: what a worker's or verifier's next job of the same task pays instead, the kept
//! tokens read back from a file and checked (`data::text::tokens_from_kept`).
//!
//! `cargo run --release -p market-compute --example text_tokenize` (after
//! `scripts/fetch-models.sh` and `scripts/fetch-corpus.sh`).

use std::time::Instant;

use market_compute::data::text::{kept_tokens, tokenize, tokenizer_from_blob, tokens_from_kept};
use market_compute::data::Dataset;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gguf = std::fs::read("models/SmolLM2-135M-Instruct.Q4_1.gguf").map_err(|e| {
        format!("models/SmolLM2-135M-Instruct.Q4_1.gguf ({e}): run scripts/fetch-models.sh")
    })?;
    let codec = tokenizer_from_blob(&gguf)?;
    let shakespeare = std::fs::read_to_string("models/shakespeare.txt")
        .map_err(|e| format!("models/shakespeare.txt ({e}): run scripts/fetch-corpus.sh"))?;
    let size = 8usize << 20;
    println!("{} threads", rayon::current_num_threads());
    let dir = std::env::temp_dir().join(format!("kept-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("| text | MB | tokens | pieces, MB/s | whole text in one call, MB/s | ratio | kept tokens read back, MB/s of text | speed-up |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, text) in [
        ("Shakespeare", shakespeare.repeat(size / shakespeare.len())),
        ("empty lines", "\n".repeat(size)),
        ("one-letter lines", "a\n".repeat(size / 2)),
        ("one line of words", "word ".repeat(size / 5)),
        // SmolLM2's pre-tokenizer isolates every digit: a token per byte or two.
        ("digit lines", "1\n".repeat(size / 2)),
        ("digits and spaces", "1 2 3 4 ".repeat(size / 8)),
    ] {
        let clock = Instant::now();
        let Dataset::Tokens(ids) = tokenize(text.as_bytes(), &codec, 49152)? else {
            unreachable!("a text is a token stream")
        };
        let pieces = clock.elapsed().as_secs_f64();
        let tokens = ids.len();
        let file = dir.join("tokens.derived");
        std::fs::write(&file, kept_tokens(&ids))?;
        let clock = Instant::now();
        let back = tokens_from_kept(&std::fs::read(&file)?, 49152).ok_or("kept tokens refused")?;
        let kept = clock.elapsed().as_secs_f64();
        assert_eq!(back, ids);
        let clock = Instant::now();
        let whole = codec.encode_plain(&text)?.len();
        let baseline = clock.elapsed().as_secs_f64();
        let mb = text.len() as f64 / 1e6;
        println!(
            "| {name} | {mb:.1} | {tokens} (whole: {whole}) | {:.1} | {:.1} | {:.2} | {:.0} | {:.0} |",
            mb / pieces,
            mb / baseline,
            baseline / pieces,
            mb / kept,
            pieces / kept
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
