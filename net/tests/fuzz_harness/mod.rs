//! The network's decoders under hostile input, shared by `tests/fuzz_codec.rs` and the
//! cargo-fuzz targets `fuzz/fuzz_targets/frame.rs` and `manifest.rs` (which include this file
//! by path): the request-response frame codec, manifests and file entries, and gossiped
//! ledger heads. Each must return a value or an error, never panic, and a frame it accepts must
//! respect the limits of `spec/NETWORK.md` section 4.

#![allow(dead_code)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use libp2p::futures::executor::block_on;
use libp2p::futures::io::Cursor;
use libp2p::futures::AsyncRead;
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use market_net::codec::{decode_header, Inbound, MarketCodec};
use market_net::heads::HeadWatch;
use market_net::transfer::{check_bundle_path, check_manifest};
use market_net::wire::{
    AuditJob, FileEntry, Manifest, Reply, Request, Response, Source, MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES, PROTOCOL_NAME,
};
use market_protocol::fixtures::{checkpoint_hashes, commitment, training_task};
use market_protocol::*;

/// A stream that hands out at most `step` bytes per read, as a network does.
pub struct Trickle<'a> {
    pub bytes: &'a [u8],
    pub step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = buf.len().min(this.step.max(1)).min(this.bytes.len());
        buf[..n].copy_from_slice(&this.bytes[..n]);
        this.bytes = &this.bytes[n..];
        Poll::Ready(Ok(n))
    }
}

fn protocol() -> StreamProtocol {
    StreamProtocol::new(PROTOCOL_NAME)
}

/// The codec's tree-free header decode against serde's own decode of the internally tagged
/// enums (which buffers a tree, and which it replaced): the same verdict and the same value on
/// every input, except the inputs the spec never allowed and serde happened to take (a header
/// that is not an object, a `type` that is not a string).
pub fn check_header(bytes: &[u8]) {
    fn same<M>(bytes: &[u8], new: serde_json::Result<M>, old: serde_json::Result<M>)
    where
        M: PartialEq + std::fmt::Debug,
    {
        match (new, old) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "the header decoders read different values"),
            (Err(_), Err(_)) => {}
            (Ok(a), Err(e)) => panic!("accepted a header serde refuses ({e}): {a:?}"),
            (Err(e), Ok(b)) => assert!(
                outside_spec(bytes),
                "refused a header serde accepts ({e}): {b:?} from {:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }
    same(
        bytes,
        decode_header::<Request>(bytes),
        serde_json::from_slice::<Request>(bytes),
    );
    same(
        bytes,
        decode_header::<Response>(bytes),
        serde_json::from_slice::<Response>(bytes),
    );
}

fn outside_spec(bytes: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(m)) => {
            !matches!(m.get("type"), Some(serde_json::Value::String(_)))
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Reads `bytes` as a request, as a reply, and (when it decodes) checks what a node checks.
pub fn check_frames(bytes: &[u8], step: usize) {
    check_header(bytes);
    check_header(bytes.get(4..).unwrap_or_default());
    block_on(async {
        let mut codec = MarketCodec;
        let mut io = Trickle { bytes, step };
        if let Ok(Inbound::Request(req)) = codec.read_request(&protocol(), &mut io).await {
            exercise_request(&req);
            // What was read writes back and reads again as the same request.
            let mut out = Cursor::new(Vec::new());
            codec
                .write_request(&protocol(), &mut out, Inbound::Request(req.clone()))
                .await
                .expect("a decoded request writes");
            let again = codec
                .read_request(&protocol(), &mut Cursor::new(out.into_inner()))
                .await;
            assert!(
                matches!(&again, Ok(Inbound::Request(r)) if *r == req),
                "a request must read back as itself: {again:?}"
            );
        }
        let mut io = Trickle { bytes, step };
        if let Ok(reply) = codec.read_response(&protocol(), &mut io).await {
            assert!(reply.payload.len() <= MAX_PAYLOAD_BYTES);
            if let Response::File { entry } = &reply.response {
                check_entry(entry);
            }
        }
    });
}

fn check_entry(entry: &FileEntry) {
    let m = Manifest {
        files: vec![entry.clone()],
    };
    let _ = m.bytes();
    let _ = check_manifest(&m);
}

/// What a node does with a request before acting on it.
fn exercise_request(req: &Request) {
    let _ = req.name();
    match req {
        Request::Hello { hello } => {
            let _ = hello.verify();
        }
        Request::Assign { task, .. } => {
            let _ = task.blobs();
            let _ = message_id(task);
        }
        Request::Done {
            commitment,
            manifest,
            ..
        } => {
            let _ = commitment.verify();
            let _ = manifest.bytes();
            if check_manifest(manifest).is_ok() {
                let total = manifest.bytes();
                assert!(total <= manifest.files.len() as u64 * market_net::wire::MAX_FILE_BYTES);
            }
        }
        Request::Audit { job } => {
            let _ = check_manifest(&job.manifest);
            let node = Identity::from_test_label("node").account();
            let commitment_id = CommitmentId(Hash::of(b"commitment"));
            let _ =
                market_protocol::beacon::verify_beacon(&node, &commitment_id, &job.beacon_proof);
        }
        Request::Verdict { verdict, .. } => {
            let _ = verdict.verify();
        }
        Request::Describe { source } | Request::Fetch { source, .. } => {
            if let Source::Bundle { path, .. } = source {
                let _ = check_bundle_path(path);
            }
        }
        Request::Serving { offers } => {
            for offer in offers {
                let _ = market_net::wire::ServeOffer::valid_name(&offer.name);
            }
        }
        Request::Generate { task, .. } => {
            let _ = message_id(task);
        }
        Request::Answered { answer, record, .. } => {
            let _ = answer.verify();
            let _ = Hash::of(record.as_bytes());
        }
        Request::CheckAnswer { job } => {
            let _ = job.answer.verify();
            let _ = message_id(&job.request);
            let node = Identity::from_test_label("node").account();
            let _ =
                market_protocol::beacon::verify_batch_beacon(&node, &job.batch, &job.beacon_proof);
            // The verifier bounds the sample before drawing it.
            if job.answers <= market_net::wire::MAX_BATCH_ANSWERS {
                let _ = market_protocol::sampling::sample_indices(
                    &market_protocol::ChallengeSeed(job.beacon.0),
                    job.answers,
                    job.sampled,
                );
            }
        }
        Request::AnswerChecked { check, .. } => {
            let _ = check.verify();
        }
        Request::Progress { .. }
        | Request::Text { .. }
        | Request::Unanswered { .. }
        | Request::Failed { .. }
        | Request::OpenSteps { .. }
        | Request::Cancel { .. }
        | Request::Settled { .. } => {}
    }
}

/// A manifest or file entry as JSON (as inside a `done`, an `audit` or a `file` reply).
pub fn check_manifest_json(bytes: &[u8]) {
    if let Ok(m) = serde_json::from_slice::<Manifest>(bytes) {
        let _ = m.bytes();
        let _ = check_manifest(&m);
    }
    if let Ok(e) = serde_json::from_slice::<FileEntry>(bytes) {
        check_entry(&e);
    }
}

/// A gossiped ledger head.
pub fn check_head(bytes: &[u8]) {
    let op = Identity::from_test_label("head operator");
    let mut watch = HeadWatch::default();
    let _ = watch.observe(bytes, Some(op.account().to_peer_id()));
    let _ = watch.observe(bytes, None);
}

/// Writes `req` as a frame.
pub fn request_frame(req: Request) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    block_on(MarketCodec.write_request(&protocol(), &mut out, Inbound::Request(req)))
        .expect("write request");
    out.into_inner()
}

/// Writes `reply` as a frame.
pub fn reply_frame(reply: Reply) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    block_on(MarketCodec.write_response(&protocol(), &mut out, reply)).expect("write reply");
    out.into_inner()
}

/// A manifest of two bundle files.
pub fn manifest() -> Manifest {
    Manifest {
        files: vec![
            FileEntry {
                path: "leaves.json".into(),
                size: 10,
                chunks: vec![Hash::of(b"leaves")],
            },
            FileEntry {
                path: "checkpoints/000001.st".into(),
                size: (1 << 20) + 1,
                chunks: vec![Hash::of(b"a"), Hash::of(b"b")],
            },
        ],
    }
}

/// Valid frames of every request and reply type, to mutate.
pub fn frame_seeds() -> Vec<Vec<u8>> {
    let buyer = Identity::from_test_label("buyer");
    let worker = Identity::from_test_label("worker");
    let verifier = Identity::from_test_label("verifier");
    let node = Identity::from_test_label("node");
    let task = training_task(&buyer, 1);
    let task_id = TaskId(message_id(&task).expect("id"));
    let body = commitment(&worker, &task, &checkpoint_hashes("run", 4));
    let commitment_id = CommitmentId(message_id(&body).expect("id"));
    let (beacon_value, beacon_proof) = market_protocol::beacon::prove_beacon(&node, &commitment_id);
    let hello = Hello {
        version: Version::CURRENT,
        account: worker.account(),
        node: node.account(),
        role: Role::Worker,
        capabilities: Capabilities {
            profiles: vec!["repro".into()],
            device: "cpu".into(),
            memory_bytes: 1 << 30,
            disk_bytes: 1 << 34,
            steps_per_ksec: 10,
        },
        stake: Credits(5),
        session: 1,
    };
    let verdict = Verdict {
        version: Version::CURRENT,
        verifier: verifier.account(),
        commitment_id,
        challenge_id: ChallengeId(Hash::of(b"challenge")),
        checked: vec![],
        outcome: VerdictOutcome::Pass,
        compute_share_ppm: 0,
    };
    let requests = vec![
        Request::Hello {
            hello: Signed::sign(hello, &worker).expect("sign"),
        },
        Request::Assign {
            task_id,
            job: 3,
            task: task.clone(),
            slot_round: None,
        },
        Request::Assign {
            task_id,
            job: 4,
            task: task.clone(),
            slot_round: Some(market_protocol::SlotRound {
                slot: 1,
                round: 2,
                start: market_protocol::StateHash(Hash::of(b"start")),
            }),
        },
        Request::Progress {
            task_id,
            job: 3,
            done: 1,
            total: 9,
            loss: F32Bits::from_f32(1.5),
        },
        Request::Done {
            task_id,
            job: 3,
            commitment: Signed::sign(body, &worker).expect("sign"),
            manifest: manifest(),
        },
        Request::Failed {
            task_id,
            job: 3,
            reason: "out of memory".into(),
        },
        Request::Audit {
            job: AuditJob {
                task_id,
                job: 3,
                beacon: beacon_value,
                beacon_proof,
                verifiers: 2,
                manifest: manifest(),
            },
        },
        Request::Verdict {
            task_id,
            job: 3,
            verdict: Signed::sign(verdict, &verifier).expect("sign"),
        },
        Request::OpenSteps {
            task_id,
            job: 3,
            segment: 1,
        },
        Request::Cancel {
            task_id,
            job: 3,
            reason: "the run deadline passed".into(),
        },
        Request::Settled {
            task_id,
            balance: 7,
        },
        Request::Serving {
            offers: vec![market_net::wire::ServeOffer {
                model: BlobId(Hash::of(b"model")),
                name: "tiny-llama".into(),
                profile: market_protocol::ExecutionProfile::Repro,
                price_per_token: 2,
                concurrency: 1,
            }],
        },
        Request::Text {
            request: 4,
            seq: 0,
            text: "Par".into(),
        },
        Request::Unanswered {
            request: 4,
            reason: "the worker is shutting down".into(),
        },
        Request::Describe {
            source: Source::Blob {
                id: BlobId(Hash::of(b"blob")),
            },
        },
        Request::Fetch {
            source: Source::Bundle {
                task_id,
                job: 3,
                path: "checkpoints/000001.st".into(),
            },
            chunk: 1,
        },
    ];
    let mut frames: Vec<Vec<u8>> = requests.into_iter().map(request_frame).collect();
    for reply in [
        Reply::of(Response::Ok),
        Reply::of(Response::Welcome {
            stake: 5,
            balance: 9,
        }),
        Reply::of(Response::File {
            entry: manifest().files[1].clone(),
        }),
        Reply {
            response: Response::Chunk,
            payload: vec![7; 300],
        },
        Reply::refused("no"),
    ] {
        frames.push(reply_frame(reply));
    }
    frames
}

/// Valid JSON manifests, file entries and signed heads, to mutate.
pub fn json_seeds() -> Vec<Vec<u8>> {
    let op = Identity::from_test_label("head operator");
    let head = market_ledger::LedgerHead {
        version: Version::CURRENT,
        ledger: op.account(),
        seq: 5,
        hash: Hash::of(b"head"),
    };
    vec![
        serde_json::to_vec(&manifest()).expect("json"),
        serde_json::to_vec(&manifest().files[1]).expect("json"),
        serde_json::to_vec(&Signed::sign(head, &op).expect("sign")).expect("json"),
    ]
}

/// The header limit, for the tests' frames.
pub const HEADER_LIMIT: usize = MAX_HEADER_BYTES;
