//! Serving: models loaded once at start and kept, requests answered as the node sends them,
//! the text streamed back while it is generated, then the answer signed.
//!
//! The answer is the same bytes a posted one-item inference task would commit (the same
//! [`market_compute::serving::ServedModel::answer`] path as any item), so verifiers check it
//! with the code that checks posted tasks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use market_compute::serving::{Served as ServedAnswer, ServedModel};
use market_net::wire::{Reply, Request, Response, ServeOffer, MAX_TEXT_PIECE_BYTES};
use market_net::{Net, PeerId, Responder};
use market_protocol::{
    message_id, Answer, BlobId, ExecutionProfile, Identity, InferenceInputs, Signed, TaskId,
    TaskSpec, Version, Workload,
};
use tokio::sync::{mpsc, Semaphore};

/// What to serve, from the command line.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Models: the name clients ask for, and the GGUF file.
    pub models: Vec<(String, PathBuf)>,
    /// Credits per token asked.
    pub price_per_token: u64,
    /// Requests answered at once, per model.
    pub concurrency: u32,
    /// The profile the models run in.
    pub profile: ExecutionProfile,
    /// Testing aid: cheat this way, so audits of served answers can be measured.
    pub fault: Option<ServeFault>,
    /// With `fault`: fake one answer in this many (the first, then every this-many-th), or
    /// every answer for 0 or 1.
    pub fault_every: u32,
}

/// How a cheating serving worker fakes its answers (a testing aid, like [`crate::Behavior`]).
/// Each signs the request it was sent, so only an audit can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeFault {
    /// Stops after half the tokens the request allows (a truncated answer, cheaper to make).
    Truncate,
    /// Answers another question (made-up text that reads well).
    OtherPrompt,
    /// Answers honestly but signs ten times the prompt's tokens (an inflated bill).
    Overcharge,
    /// Answers with other weights than the model it offers (here the offered model's, each
    /// scaled by 0.98: a stand-in for a cheaper or different fine-tune).
    OtherWeights,
    /// Answers with the offered model's weights rounded to bfloat16 (8 bits of mantissa), as
    /// a worker saving memory or time on lower precision would.
    LowerPrecision,
}

impl ServeFault {
    /// The weights a cheat of this kind answers with instead of the GGUF file `bytes`, written
    /// as another GGUF file; `None` for cheats that keep the weights.
    pub fn altered_weights(self, bytes: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let alter: fn(f32) -> f32 = match self {
            Self::OtherWeights => |w| w * 0.98,
            Self::LowerPrecision => to_bf16,
            _ => return Ok(None),
        };
        let mut file = market_compute::llama::gguf::read(bytes)?;
        for w in &mut file.weights.params {
            *w = alter(*w);
        }
        Ok(Some(market_compute::llama::gguf::write_f32(
            &file.weights,
            &file.vocab,
        )?))
    }

    /// The request the cheat actually runs instead of `task`.
    fn apply(self, task: &TaskSpec) -> TaskSpec {
        let mut run = task.clone();
        let Workload::Inference(inf) = &mut run.workload else {
            return run;
        };
        match (&mut inf.inputs, self) {
            (
                InferenceInputs::Chat { max_new_tokens, .. }
                | InferenceInputs::Prompts { max_new_tokens, .. },
                Self::Truncate,
            ) => *max_new_tokens = (*max_new_tokens / 2).max(1),
            (InferenceInputs::Chat { chats, .. }, Self::OtherPrompt) => {
                for chat in chats {
                    if let Some(last) = chat.last_mut() {
                        last.content = "Tell me about something else.".into();
                    }
                }
            }
            (InferenceInputs::Prompts { prompts, .. }, Self::OtherPrompt) => {
                for p in prompts {
                    *p = "Once upon a time".into();
                }
            }
            _ => {}
        }
        run
    }
}

/// `w` rounded to the nearest bfloat16 (ties to even), back as an f32.
fn to_bf16(w: f32) -> f32 {
    if !w.is_finite() {
        return w;
    }
    let bits = w.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// Parses `NAME=PATH` (a `--serve` argument).
pub fn parse_serve_arg(arg: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = arg.split_once('=').ok_or_else(|| {
        format!("{arg:?} is not NAME=PATH (for example smollm2=models/smollm2.gguf)")
    })?;
    if !ServeOffer::valid_name(name) {
        return Err(format!(
            "{name:?} is not a model name: 1 to 64 of A-Z a-z 0-9 . _ : / -"
        ));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

struct Model {
    fault: Option<ServeFault>,
    /// What a weights cheat answers with.
    altered: Option<Arc<ServedModel>>,
    fault_every: u32,
    answered: std::sync::atomic::AtomicU64,
    offer: ServeOffer,
    model: Arc<ServedModel>,
    slots: Arc<Semaphore>,
}

/// The models a worker serves, loaded.
pub struct Served {
    models: BTreeMap<BlobId, Model>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("models", &self.offers())
            .finish()
    }
}

impl Served {
    /// Reads and loads every model (seconds per model: run it off the async threads).
    pub fn load(options: &ServeOptions, identity: &Identity) -> anyhow::Result<Self> {
        let mut models = BTreeMap::new();
        for (name, path) in &options.models {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let model = ServedModel::load(&bytes, options.profile, identity.account())
                .map_err(|e| anyhow::anyhow!("{} cannot be served: {e}", path.display()))?;
            tracing::info!(%name, blob = %model.weights, "serving");
            let altered = match options.fault.map(|f| f.altered_weights(&bytes)) {
                Some(Ok(Some(other))) => Some(Arc::new(ServedModel::load(
                    &other,
                    options.profile,
                    identity.account(),
                )?)),
                Some(Err(e)) => return Err(e),
                _ => None,
            };
            let offer = ServeOffer {
                model: model.weights,
                name: name.clone(),
                profile: options.profile,
                price_per_token: options.price_per_token,
                concurrency: options.concurrency.max(1),
            };
            models.insert(
                model.weights,
                Model {
                    fault: options.fault,
                    altered,
                    fault_every: options.fault_every,
                    answered: Default::default(),
                    offer,
                    model: Arc::new(model),
                    slots: Arc::new(Semaphore::new(options.concurrency.max(1) as usize)),
                },
            );
        }
        Ok(Self { models })
    }

    /// What to announce to the node.
    pub fn offers(&self) -> Vec<ServeOffer> {
        self.models.values().map(|m| m.offer.clone()).collect()
    }
}

/// Answers the node's `generate`: refused at once if the model is not served here or every
/// slot is busy, otherwise accepted, then answered in the background.
pub fn on_generate(
    served: &Arc<Served>,
    net: &Net,
    node: PeerId,
    identity: &Identity,
    request: u64,
    task: TaskSpec,
    responder: Responder,
) {
    let Workload::Inference(inf) = &task.workload else {
        return responder.send(Reply::refused("a served request is an inference task"));
    };
    let Some(model) = inf.weights.and_then(|w| served.models.get(&w)) else {
        return responder.send(Reply::refused("this worker does not serve that model"));
    };
    let Ok(permit) = model.slots.clone().try_acquire_owned() else {
        return responder.send(Reply::refused("every slot is busy"));
    };
    let Ok(id) = message_id(&task) else {
        return responder.send(Reply::refused("the task does not encode"));
    };
    responder.send(Reply::of(Response::Ok));
    let n = model
        .answered
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fake = model
        .fault
        .filter(|_| model.fault_every <= 1 || n % u64::from(model.fault_every) == 0);
    let mut run = fake.map_or_else(|| task.clone(), |f| f.apply(&task));
    // A weights cheat runs the request on its altered model (named by its own blob id).
    let computes = match (&model.altered, fake) {
        (Some(altered), Some(_)) => {
            if let Workload::Inference(inf) = &mut run.workload {
                inf.weights = Some(altered.weights);
            }
            altered.clone()
        }
        _ => model.model.clone(),
    };
    let (model, net, identity) = (model.model.clone(), net.clone(), identity.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let outcome = answer(&computes, &net, node, request, run).await;
        let report = match outcome {
            Ok(mut served) => {
                if fake == Some(ServeFault::Overcharge) {
                    served.prompt_tokens = served.prompt_tokens.saturating_mul(10);
                }
                answered(&identity, &model, TaskId(id), request, served)
            }
            Err(reason) => Request::Unanswered { request, reason },
        };
        if let Err(e) = net.request(node, report).await {
            tracing::warn!(request, error = %e, "the answer did not reach the node");
        }
    });
}

/// Generates on the blocking pool while a sender streams the pieces to the node, in order,
/// each message carrying whatever text has piled up since the last.
async fn answer(
    model: &Arc<ServedModel>,
    net: &Net,
    node: PeerId,
    request: u64,
    task: TaskSpec,
) -> Result<ServedAnswer, String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let m = model.clone();
    let generation = tokio::task::spawn_blocking(move || {
        m.answer(&task, &mut |piece| {
            let _ = tx.send(piece.to_string());
        })
    });
    let net = net.clone();
    let sender = tokio::spawn(async move {
        let mut seq = 0u32;
        while let Some(mut text) = rx.recv().await {
            while text.len() < MAX_TEXT_PIECE_BYTES / 2 {
                match rx.try_recv() {
                    Ok(more) => text.push_str(&more),
                    Err(_) => break,
                }
            }
            // Split at character boundaries under the size limit.
            for piece in pieces(&text, MAX_TEXT_PIECE_BYTES) {
                let msg = Request::Text {
                    request,
                    seq,
                    text: piece.to_string(),
                };
                match net.request(node, msg).await.map(|r| r.response) {
                    Ok(Response::Ok) => seq += 1,
                    Ok(other) => return Err(format!("the node refused the text: {other:?}")),
                    Err(e) => return Err(format!("the node is unreachable: {e}")),
                }
            }
        }
        Ok(())
    });
    let served = generation
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    sender.await.map_err(|e| e.to_string())??;
    Ok(served)
}

/// `text` in pieces of at most `max` bytes, cut at character boundaries.
fn pieces(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

fn answered(
    identity: &Identity,
    model: &ServedModel,
    id: TaskId,
    request: u64,
    served: ServedAnswer,
) -> Request {
    let record = match String::from_utf8(served.output.bytes) {
        Ok(r) => r,
        Err(_) => {
            return Request::Unanswered {
                request,
                reason: "the answer record is not UTF-8".into(),
            }
        }
    };
    let completion_tokens = market_compute::inference::AnswerRecord::from_bytes(record.as_bytes())
        .map_or(0, |r| r.tokens.len() as u32);
    let body = Answer {
        version: Version::CURRENT,
        worker: identity.account(),
        request: id,
        model: model.weights,
        output: served.output.hash,
        prompt_tokens: served.prompt_tokens,
        completion_tokens,
    };
    match Signed::sign(body, identity) {
        Ok(answer) => Request::Answered {
            request,
            answer,
            record,
        },
        Err(e) => Request::Unanswered {
            request,
            reason: format!("signing: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cut_at_characters_under_the_limit() {
        let text = "aé€😀b".repeat(10);
        for max in [4, 5, 7, 64] {
            let p = pieces(&text, max);
            assert!(p.iter().all(|s| s.len() <= max && !s.is_empty()));
            assert_eq!(p.concat(), text);
        }
    }

    #[test]
    fn serve_arguments_need_a_name_and_a_path() {
        assert_eq!(
            parse_serve_arg("smollm2=models/a.gguf").unwrap(),
            ("smollm2".to_string(), PathBuf::from("models/a.gguf"))
        );
        assert!(parse_serve_arg("models/a.gguf").is_err());
        assert!(parse_serve_arg("bad name=x").is_err());
        assert!(parse_serve_arg("=x").is_err());
    }
}
