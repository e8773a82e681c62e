//! Serving: a model loaded once answers one-item requests with the bytes a posted task of the
//! same request commits, streaming text that adds up to the answer.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use market_compute::llama::fixtures::tiny_gguf;
use market_compute::serving::{ServePrompt, ServeRequest, ServedModel};
use market_compute::{BlobSource, InferenceJob};
use market_protocol::{
    AuditPolicy, BlobId, ChatMessage, Credits, Decoding, ExecutionProfile, Identity,
};

struct One(BlobId, Vec<u8>);

impl BlobSource for One {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        (*id == self.0).then(|| self.1.clone())
    }
}

fn request(
    model: &ServedModel,
    prompt: ServePrompt,
    stop: Vec<String>,
    decoding: Decoding,
) -> ServeRequest {
    ServeRequest {
        buyer: Identity::from_test_label("serving buyer").account(),
        nonce: 9,
        weights: model.weights,
        model: model.model.clone(),
        profile: model.profile,
        prompt,
        max_new_tokens: 40,
        stop,
        decoding,
        seed: 77,
        price: Credits(100),
        audit: AuditPolicy {
            detection_target: "0.99".parse().unwrap(),
            assumed_faked_fraction: "0.1".parse().unwrap(),
        },
    }
}

fn chat(text: &str) -> ServePrompt {
    ServePrompt::Chat(vec![ChatMessage {
        role: "user".into(),
        content: text.into(),
    }])
}

#[test]
fn a_served_answer_is_the_posted_items_answer_and_streams_to_its_text() {
    let bytes = tiny_gguf(5).unwrap();
    let worker = Identity::from_test_label("serving worker").account();
    let model = ServedModel::load(&bytes, ExecutionProfile::Repro, worker).unwrap();
    let blobs = One(model.weights, bytes.clone());
    let sampled = Decoding::Sample {
        temperature: "0.8".parse().unwrap(),
        top_k: 0,
        top_p: None,
    };
    let mut streamed_something = false;
    let mut stopped = 0;
    for (prompt, decoding) in [
        (chat("hello there"), Decoding::Greedy),
        (chat("what now?"), sampled.clone()),
        (ServePrompt::Text("abc".into()), sampled),
    ] {
        // First without a stop text, to learn a piece of the answer to stop at.
        let task = request(&model, prompt.clone(), Vec::new(), decoding.clone()).to_task();
        let mut pieces = Vec::new();
        let served = model
            .answer(&task, &mut |p| pieces.push(p.to_string()))
            .unwrap();
        let posted = InferenceJob::from_spec(&task, &blobs).unwrap();
        assert_eq!(
            served.output,
            posted.run_item(0).unwrap(),
            "same bytes as a posted task"
        );
        assert_eq!(
            posted.check_item(0, &served.output.bytes).unwrap(),
            Some(Ok(())),
            "a verifier accepts it"
        );
        let record =
            market_compute::inference::AnswerRecord::from_bytes(&served.output.bytes).unwrap();
        assert_eq!(pieces.concat(), record.text);
        assert!(pieces.iter().all(|p| !p.is_empty()));
        streamed_something |= pieces.len() > 1;
        assert_eq!(
            served.prompt_tokens as usize,
            posted.prompt_tokens(0).unwrap()
        );

        // A stop text from the middle of that answer: the stream never shows it.
        // A plain prompt has no stop texts (the task format has none for it).
        if matches!(prompt, ServePrompt::Text(_)) {
            continue;
        }
        let chars: Vec<char> = record.text.chars().collect();
        let Some(at) = (chars.len() / 2..chars.len().saturating_sub(1))
            .find(|&i| chars[i] != '\u{FFFD}' && chars[i + 1] != '\u{FFFD}')
        else {
            continue;
        };
        let stop: String = chars[at..at + 2].iter().collect();
        let task = request(&model, prompt, vec![stop.clone()], decoding).to_task();
        let mut pieces = Vec::new();
        let served = model
            .answer(&task, &mut |p| pieces.push(p.to_string()))
            .unwrap();
        let record =
            market_compute::inference::AnswerRecord::from_bytes(&served.output.bytes).unwrap();
        assert_eq!(record.finish, "stop", "{stop:?} in {:?}", record.text);
        assert_eq!(pieces.concat(), record.text);
        assert!(!pieces.concat().contains(&stop));
        let posted = InferenceJob::from_spec(&task, &blobs).unwrap();
        assert_eq!(
            posted.check_item(0, &served.output.bytes).unwrap(),
            Some(Ok(()))
        );
        stopped += 1;
    }
    assert!(stopped > 0, "a stop text was tried");
    assert!(streamed_something, "answers stream in more than one piece");
}

#[test]
fn a_served_model_answers_only_requests_for_itself() {
    let bytes = tiny_gguf(5).unwrap();
    let worker = Identity::from_test_label("serving worker").account();
    let model = ServedModel::load(&bytes, ExecutionProfile::Repro, worker).unwrap();
    let other = ServedModel::load(&tiny_gguf(6).unwrap(), ExecutionProfile::Repro, worker).unwrap();
    let mut task = request(&other, chat("hi"), Vec::new(), Decoding::Greedy).to_task();
    assert!(model.answer(&task, &mut |_| {}).is_err(), "other weights");
    task = request(&model, chat("hi"), Vec::new(), Decoding::Greedy).to_task();
    task.profile = ExecutionProfile::Native;
    assert!(model.answer(&task, &mut |_| {}).is_err(), "another profile");
}

/// The model cache the node and the verifier share: one load per (weights, profile, with or
/// without weights), the header-only kind never evicted, at most `MAX_LOADED` with weights,
/// and a blob that is not there an error rather than a model.
#[test]
fn the_model_cache_loads_once_and_bounds_what_it_keeps() {
    use market_compute::serving::ModelCache;
    use std::collections::BTreeMap;
    let me = market_protocol::Identity::from_test_label("cache").account();
    let mut blobs: BTreeMap<market_protocol::BlobId, Vec<u8>> = BTreeMap::new();
    let mut ids = Vec::new();
    for seed in 0..(ModelCache::MAX_LOADED as u64 + 1) {
        let bytes = market_compute::llama::fixtures::tiny_gguf(seed).unwrap();
        let id = market_protocol::BlobId::of(&bytes);
        blobs.insert(id, bytes);
        ids.push(id);
    }
    let repro = market_protocol::ExecutionProfile::Repro;
    let cache = ModelCache::default();
    let header = cache.get(&blobs, ids[0], repro, false, me).unwrap();
    let full = cache.get(&blobs, ids[0], repro, true, me).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&header, &full));
    assert!(std::sync::Arc::ptr_eq(
        &full,
        &cache.get(&blobs, ids[0], repro, true, me).unwrap()
    ));
    for id in &ids[1..] {
        cache.get(&blobs, *id, repro, true, me).unwrap();
    }
    // The first model with its weights went; its header-only kind stayed.
    assert!(cache.find(ids[0], repro, true).is_none());
    assert!(cache.find(ids[0], repro, false).is_some());
    assert!(cache.find(ids[1], repro, true).is_some());
    let missing = market_protocol::BlobId(market_protocol::Hash::of(b"nothing"));
    assert!(cache.get(&blobs, missing, repro, false, me).is_err());
}
