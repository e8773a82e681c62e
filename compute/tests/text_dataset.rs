//! Training on text (issue 15): a text blob tokenized by the tokenizer of a GGUF file trains
//! exactly as the token blob of the same tokens would, its blobs are named by the task, and bad
//! text or a bad tokenizer gets a clear error.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::BTreeMap;

use market_compute::data::text::{pieces, MAX_PIECE_BYTES, MIN_PIECE_BYTES};
use market_compute::llama::fixtures::{bpe_config, bpe_gguf, bpe_vocab};
use market_compute::llama::text::{TextCodec, MAX_TOKEN_BYTES};
use market_compute::{ComputeError, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::{BlobId, DatasetSource, Identity, ModelSpec, TaskSpec, Workload};

/// Lines of English over the tiny vocabulary (printable ASCII, spaces and newlines), one of
/// them longer than a piece.
fn text() -> String {
    let mut t = String::new();
    for i in 0..60 {
        t.push_str(&format!(
            "the band and the {} hands in the {} then\n",
            ["rain", "wind", "sun"][i % 3],
            i
        ));
    }
    t.push_str(&"and then the end ".repeat(MAX_PIECE_BYTES / 10));
    t.push('\n');
    t
}

/// A fine-tune of the tiny BPE model from its GGUF file on `dataset`, 12 steps.
fn task(dataset: DatasetSource, gguf: BlobId) -> TaskSpec {
    let mut config = bpe_config();
    config.max_position_embeddings = 16;
    let mut task = training_task(&Identity::from_test_label("text buyer"), 1);
    if let Workload::Training(t) = &mut task.workload {
        t.model = config.to_spec().unwrap();
        t.dataset = dataset;
        t.initial_weights = Some(gguf);
        t.batch_size = 3;
        t.steps = 12;
        t.checkpoint_interval = 4;
    }
    task
}

/// Section 3's piece rule written plainly from the spec: where each piece ends. A piece ends
/// just after the first newline at or after its byte 1023 (0-based) and before its byte 4096,
/// else at the text's end if that is at most 4096 bytes on, else at the last character
/// boundary at most 4096 bytes on.
fn spec_piece_ends(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut ends = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let window = (start + MIN_PIECE_BYTES - 1)..(start + MAX_PIECE_BYTES).min(bytes.len());
        let end = match window.clone().find(|&i| bytes[i] == b'\n') {
            Some(i) => i + 1,
            None if bytes.len() - start <= MAX_PIECE_BYTES => bytes.len(),
            None => (start + 1..=start + MAX_PIECE_BYTES)
                .rev()
                .find(|&e| text.is_char_boundary(e))
                .unwrap(),
        };
        ends.push(end);
        start = end;
    }
    ends
}

fn token_blob(tokens: &[u32]) -> Vec<u8> {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::U32, vec![tokens.len()], &bytes)
            .unwrap();
    safetensors::serialize([("tokens", view)], None).unwrap()
}

fn put(blobs: &mut BTreeMap<BlobId, Vec<u8>>, bytes: Vec<u8>) -> BlobId {
    let id = BlobId::of(&bytes);
    blobs.insert(id, bytes);
    id
}

/// Every checkpoint hash of a task's run.
fn run(task: &TaskSpec, blobs: &BTreeMap<BlobId, Vec<u8>>) -> Vec<String> {
    let job = TrainingJob::from_spec(task, blobs).unwrap();
    let mut state = job.initial_state();
    let mut hashes = vec![state.hash(&job.layout).unwrap().to_string()];
    for seg in 0..job.segments() {
        state = job.run_segment(seg, &state, |_, _| {}).unwrap().0;
        hashes.push(state.hash(&job.layout).unwrap().to_string());
    }
    hashes
}

#[test]
fn a_text_blob_trains_exactly_as_the_token_blob_of_its_pieces_tokens() {
    let mut blobs = BTreeMap::new();
    let gguf = put(&mut blobs, bpe_gguf(3).unwrap());
    let text = text();
    let text_id = put(&mut blobs, text.clone().into_bytes());
    // The tokens the spec defines, made here without the dataset code: the tokenizer's
    // encoding of each piece, the pieces cut by `spec_piece_ends`.
    let codec = TextCodec::from_gguf(&bpe_vocab()).unwrap();
    let ends = spec_piece_ends(&text);
    let mut expected = Vec::new();
    let mut from = 0;
    for &end in &ends {
        expected.extend(codec.encode(&text[from..end]).unwrap());
        from = end;
    }
    let mut at = 0;
    let got: Vec<usize> = pieces(&text)
        .map(|p| {
            at += p.len();
            at
        })
        .collect();
    assert_eq!(got, ends);
    // Several lines per piece, and a line cut at the piece size.
    assert!(ends.len() >= 4 && ends.len() < 60, "{ends:?}");
    // The merges were used, so the tokenizer is really a BPE one.
    assert!(expected.len() < text.len() * 2 / 3, "{}", expected.len());
    let tokens_id = put(&mut blobs, token_blob(&expected));

    let from_text = task(
        DatasetSource::Text {
            id: text_id,
            tokenizer: gguf,
        },
        gguf,
    );
    let from_tokens = task(DatasetSource::Blob { id: tokens_id }, gguf);
    let a = run(&from_text, &blobs);
    assert_eq!(a.len(), 4);
    assert_eq!(a, run(&from_tokens, &blobs));
    // It trained: the checkpoints move.
    assert_ne!(a[0], a[3]);
    // A worker fetches the text and the tokenizer, once each though it is also the weights.
    assert_eq!(from_text.blobs(), vec![text_id, gguf]);

    // Its memory estimate is the token blob's but for the inputs and what tokenizing holds
    // (COMPUTE section 9's `setup`): the tokenizer and the pieces' ids before they are joined.
    let needs = |t: &TaskSpec| market_compute::resources::estimate(t, &blobs).unwrap();
    let inputs = |t: &TaskSpec| -> u64 { t.blobs().iter().map(|id| blobs[id].len() as u64).sum() };
    let extra = needs(&from_text).memory_bytes - inputs(&from_text);
    let plain = needs(&from_tokens).memory_bytes - inputs(&from_tokens);
    assert_eq!(
        extra - plain,
        codec.memory_bytes() + 4 * expected.len() as u64
    );
}

fn error(task: &TaskSpec, blobs: &BTreeMap<BlobId, Vec<u8>>) -> ComputeError {
    TrainingJob::from_spec(task, blobs).unwrap_err()
}

#[test]
fn bad_text_and_bad_tokenizers_are_refused_with_their_reason() {
    let mut blobs = BTreeMap::new();
    let gguf = put(&mut blobs, bpe_gguf(3).unwrap());
    let text_task = |blobs: &mut BTreeMap<BlobId, Vec<u8>>, bytes: Vec<u8>, tokenizer| {
        let id = put(blobs, bytes);
        task(DatasetSource::Text { id, tokenizer }, gguf)
    };

    // Not UTF-8: the byte where it stops being text.
    let mut bytes = text().into_bytes();
    bytes[100] = 0xff;
    let t = text_task(&mut blobs, bytes, gguf);
    let e = error(&t, &blobs);
    assert!(
        matches!(&e, ComputeError::InvalidBlob { what: "dataset", reason } if reason.contains("at byte 100")),
        "{e}"
    );

    // A tokenizer that is not a GGUF file.
    let json = put(&mut blobs, b"{\"model\": {}}".to_vec());
    let t = text_task(&mut blobs, text().into_bytes(), json);
    let e = error(&t, &blobs);
    assert!(
        matches!(
            &e,
            ComputeError::InvalidBlob {
                what: "tokenizer",
                ..
            }
        ),
        "{e}"
    );

    // A tokenizer whose strings would make it huge is refused before it is built: one token
    // over 1 KiB, or added tokens over 1 MiB together (each under 1 KiB).
    let mut long = bpe_vocab();
    long.tokens.push("x".repeat(MAX_TOKEN_BYTES + 1));
    let e = TextCodec::from_gguf(&long).unwrap_err();
    assert!(e.to_string().contains("over the limit of 1024"), "{e}");
    let mut added = bpe_vocab();
    for i in 0..1100 {
        added.tokens.push(format!("<{i:04}{}>", "z".repeat(990)));
        added.token_types.push(3);
    }
    let e = TextCodec::from_gguf(&added).unwrap_err();
    assert!(e.to_string().contains("added tokens hold"), "{e}");
    added.token_types.truncate(bpe_vocab().tokens.len() + 1000);
    added.tokens.truncate(bpe_vocab().tokens.len() + 1000);
    assert!(
        TextCodec::from_gguf(&added).is_ok(),
        "1000 added tokens of ~1 KB are accepted"
    );

    // A tokenizer with more tokens than the model has: the field and both sizes.
    let mut t = text_task(&mut blobs, text().into_bytes(), gguf);
    if let Workload::Training(tr) = &mut t.workload {
        let mut small = bpe_config();
        small.vocab_size -= 1;
        small.max_position_embeddings = 16;
        tr.model = small.to_spec().unwrap();
        tr.initial_weights = None;
    }
    let e = error(&t, &blobs);
    let n = bpe_config().vocab_size;
    assert!(
        matches!(&e, ComputeError::InvalidConfig { field, reason }
            if *field == "dataset.tokenizer" && reason.contains(&format!("{n} tokens"))
                && reason.contains(&format!("vocabulary of {}", n - 1))),
        "{e}"
    );

    // The size is checked before the tokenizer is built: a tokenizer 11.7 would refuse (a
    // token over 1 KiB) but with more tokens than the model gets the size refusal.
    let mut both = bpe_vocab();
    both.tokens.push("x".repeat(MAX_TOKEN_BYTES + 1));
    let json = put(
        &mut blobs,
        serde_json::to_vec(&market_compute::llama::fixtures::hf_tokenizer_json(&both)).unwrap(),
    );
    let e = error(&text_task(&mut blobs, text().into_bytes(), json), &blobs);
    assert!(
        matches!(&e, ComputeError::InvalidConfig { field, .. } if *field == "dataset.tokenizer"),
        "{e}"
    );

    // Too little text for one window.
    let t = text_task(&mut blobs, b"the end\n".to_vec(), gguf);
    assert!(matches!(
        error(&t, &blobs),
        ComputeError::InvalidConfig { .. }
    ));

    // A tokenizer nobody uploaded.
    let missing = BlobId::of(b"nobody uploaded this");
    let t = text_task(&mut blobs, text().into_bytes(), missing);
    assert!(matches!(error(&t, &blobs), ComputeError::MissingBlob(id) if id == missing));

    // An mlp takes no text.
    let mut t = text_task(&mut blobs, text().into_bytes(), gguf);
    if let Workload::Training(tr) = &mut t.workload {
        tr.model = ModelSpec::Mlp {
            widths: vec![4, 8, 2],
            activation: market_protocol::Activation::Gelu,
        };
        tr.initial_weights = None;
    }
    let e = error(&t, &blobs);
    assert!(
        matches!(&e, ComputeError::InvalidConfig { field, .. } if *field == "dataset.source"),
        "{e}"
    );
}

/// A holder that keeps derived work in memory, as a worker's or verifier's blob cache keeps
/// it on disk (`market_net::participant::DirBlobs`).
#[derive(Default)]
struct Keeping {
    blobs: BTreeMap<BlobId, Vec<u8>>,
    kept: std::cell::RefCell<BTreeMap<market_protocol::Hash, Vec<u8>>>,
}

impl market_compute::BlobSource for Keeping {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        self.blobs.get(id).cloned()
    }
    fn derived(&self, key: &market_protocol::Hash, max_bytes: u64) -> Option<Vec<u8>> {
        let kept = self.kept.borrow();
        kept.get(key)
            .filter(|b| b.len() as u64 <= max_bytes)
            .cloned()
    }
    fn keep_derived(&self, key: &market_protocol::Hash, bytes: &[u8]) {
        self.kept.borrow_mut().insert(*key, bytes.to_vec());
    }
}

/// A worker runs many jobs of one text task (a pooled task's rounds, audits): the text is
/// tokenized once, its tokens kept and read back by the next job, and what is read back is
/// checked: a damaged file, or one with an id the vocabulary lacks, is tokenized again.
#[test]
fn a_holder_tokenizes_a_text_once_and_checks_what_it_kept() {
    use market_compute::data::text::{kept_tokens, tokens_from_kept, tokens_key};
    use market_compute::data::Dataset;
    let mut holder = Keeping::default();
    let gguf = put(&mut holder.blobs, bpe_gguf(3).unwrap());
    let text_id = put(&mut holder.blobs, text().into_bytes());
    let spec = task(
        DatasetSource::Text {
            id: text_id,
            tokenizer: gguf,
        },
        gguf,
    );
    let tokens = |h: &Keeping| match TrainingJob::from_spec(&spec, h).map(|j| j.data) {
        Ok(Dataset::Tokens(t)) => Ok(t),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    let fresh = tokens(&holder).unwrap();
    let vocab = bpe_vocab().tokens.len();
    let key = tokens_key(&text_id, &gguf, vocab);
    assert_eq!(holder.kept.borrow().len(), 1);
    assert_eq!(holder.kept.borrow()[&key], kept_tokens(&fresh));
    assert_eq!(
        tokens_from_kept(&kept_tokens(&fresh), vocab),
        Some(fresh.clone())
    );

    // The next job reads them back: without the text it still has its tokens.
    let text = holder.blobs.remove(&text_id).unwrap();
    assert_eq!(tokens(&holder).unwrap(), fresh);

    // A kept file that is damaged, cut short, or holds an id the vocabulary lacks is not used.
    let good = kept_tokens(&fresh);
    let mut damaged = good.clone();
    damaged[5] ^= 1;
    let mut outside = fresh.clone();
    outside[3] = vocab as u32;
    for bad in [
        damaged,
        good[..good.len() - 4].to_vec(),
        kept_tokens(&outside),
    ] {
        holder.kept.borrow_mut().insert(key, bad.clone());
        assert!(
            matches!(tokens(&holder), Err(ComputeError::MissingBlob(id)) if id == text_id),
            "a bad kept file was used"
        );
        // With the text there, it is tokenized again, and the good tokens kept instead.
        holder.blobs.insert(text_id, text.clone());
        assert_eq!(tokens(&holder).unwrap(), fresh);
        assert_eq!(holder.kept.borrow()[&key], good);
        holder.blobs.remove(&text_id);
    }
    // Another vocabulary size is another key: tokens kept for one model are not another's.
    assert_ne!(tokens_key(&text_id, &gguf, vocab + 1), key);
}
