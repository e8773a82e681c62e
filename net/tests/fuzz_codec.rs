//! Fuzzing the libp2p request-response frame codec, manifests and gossiped heads in CI:
//! arbitrary bytes, and hostile mutations of valid frames (length prefixes claiming up to
//! 4 GiB, truncations, flipped bytes, JSON tokens), read through a stream that hands out a few
//! bytes at a time. The cargo-fuzz targets `frame` and `manifest` run the same harness
//! unbounded.
//!
//! The binary counts heap allocations, so it also checks the stated limits: a length prefix is
//! checked before anything is allocated, an announced length that never arrives costs at most
//! 64 KiB, and a block that does arrive costs exactly its length.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod fuzz_harness;
// One copy for every crate: each test binary installs its own allocator from it.
#[path = "../../protocol/tests/heap/mod.rs"]
mod heap;

use std::sync::LazyLock;

use libp2p::futures::executor::block_on;
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use market_net::codec::{Inbound, MarketCodec};
use market_net::wire::{Manifest, MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES, PROTOCOL_NAME};
use market_protocol::fixtures::hostile::mutate;
use proptest::prelude::*;

use fuzz_harness::{
    check_frames, check_head, check_manifest_json, frame_seeds, json_seeds, Trickle,
};
use heap::{config, measure, serial};

static FRAMES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(frame_seeds);
static JSON: LazyLock<Vec<Vec<u8>>> = LazyLock::new(json_seeds);

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_frames_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        step in 1usize..64,
    ) {
        let _serial = serial();
        check_frames(&bytes, step);
    }

    #[test]
    fn arbitrary_manifests_and_heads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _serial = serial();
        check_manifest_json(&bytes);
        check_head(&bytes);
    }
}

/// Header objects built from the members requests and replies have, in any order, repeated
/// or missing, with values of every shape: the tree-free decode must agree with serde's.
fn headers() -> impl Strategy<Value = String> {
    let hash = format!("\"{}\"", "0".repeat(64));
    let names = prop::sample::select(vec![
        "type", "task_id", "job", "balance", "done", "total", "loss", "reason", "stake", "entry",
        "source", "chunk", "segment", "x",
    ]);
    let values = prop::sample::select(vec![
        "\"settled\"".to_string(),
        "\"progress\"".into(),
        "\"fetch\"".into(),
        "\"ok\"".into(),
        "\"chunk\"".into(),
        "\"welcome\"".into(),
        "\"refused\"".into(),
        "\"Settled\"".into(),
        "\"t\\u0079pe\"".into(),
        "0".into(),
        "7".into(),
        "-1".into(),
        "1.5".into(),
        "4294967296".into(),
        "null".into(),
        "[]".into(),
        "{}".into(),
        "\"\"".into(),
        hash.clone(),
        format!(r#"{{"kind":"blob","id":{hash}}}"#),
    ]);
    prop::collection::vec((names, values), 0..8).prop_map(|members| {
        let members: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", members.join(","))
    })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn header_decoders_agree(header in headers()) {
        let _serial = serial();
        fuzz_harness::check_header(header.as_bytes());
    }

    #[test]
    fn mutated_frames_never_panic(
        which in any::<prop::sample::Index>(),
        program in prop::collection::vec(any::<u8>(), 0..32),
        step in prop_oneof![Just(1usize << 20), 1usize..300],
    ) {
        let _serial = serial();
        check_frames(&mutate(which.get::<Vec<u8>>(&FRAMES), &program), step);
    }

    #[test]
    fn mutated_manifests_and_heads_never_panic(
        which in any::<prop::sample::Index>(),
        program in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let _serial = serial();
        let bytes = mutate(which.get::<Vec<u8>>(&JSON), &program);
        check_manifest_json(&bytes);
        check_head(&bytes);
    }
}

#[test]
fn seeds_decode() {
    let _serial = serial();
    let protocol = StreamProtocol::new(PROTOCOL_NAME);
    let mut requests = 0;
    for frame in FRAMES.iter() {
        let mut io = Trickle {
            bytes: frame,
            step: 7,
        };
        let read = block_on(MarketCodec.read_request(&protocol, &mut io));
        requests += usize::from(matches!(read, Ok(Inbound::Request(_))));
        check_frames(frame, 7);
    }
    assert_eq!(requests, 16, "every request seed reads back");
    let m: Manifest = serde_json::from_slice(&JSON[0]).unwrap();
    market_net::transfer::check_manifest(&m).unwrap();
}

fn read_request(bytes: &[u8]) -> std::io::Result<Inbound> {
    let mut io = Trickle {
        bytes,
        step: 1 << 20,
    };
    block_on(MarketCodec.read_request(&StreamProtocol::new(PROTOCOL_NAME), &mut io))
}

fn read_response(bytes: &[u8]) -> std::io::Result<market_net::Reply> {
    let mut io = Trickle {
        bytes,
        step: 1 << 20,
    };
    block_on(MarketCodec.read_response(&StreamProtocol::new(PROTOCOL_NAME), &mut io))
}

fn frame(len: u32, body: &[u8]) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn length_prefixes_are_checked_before_allocating() {
    let _serial = serial();
    let small = 4 << 10;
    // A 4 GiB header: refused (and the sender banned) before a byte is read or allocated.
    let (r, used) = measure(|| read_request(&frame(u32::MAX, b"{}")));
    assert!(matches!(r, Ok(Inbound::Malformed(_))), "{r:?}");
    assert!(used.largest < small, "{used:?}");
    // One byte over the limit: the same.
    let (r, used) = measure(|| read_request(&frame(MAX_HEADER_BYTES as u32 + 1, b"{}")));
    assert!(matches!(r, Ok(Inbound::Malformed(_))), "{r:?}");
    assert!(used.largest < small, "{used:?}");
    // 4 MiB announced, 100 bytes sent: an I/O error that cost the first 64 KiB step only.
    let (r, used) = measure(|| read_request(&frame(MAX_HEADER_BYTES as u32, &[b' '; 100])));
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(used.largest <= 64 << 10, "{used:?}");
    // A reply whose header is fine and whose payload claims 4 GiB, or one byte over a chunk.
    let ok = br#"{"type":"chunk"}"#;
    for claim in [u32::MAX, MAX_PAYLOAD_BYTES as u32 + 1] {
        let mut bytes = frame(ok.len() as u32, ok);
        bytes.extend_from_slice(&claim.to_be_bytes());
        let (r, used) = measure(|| read_response(&bytes));
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
        assert!(used.largest < small, "{used:?}");
    }
}

#[test]
fn a_block_that_arrives_costs_its_length_and_no_more() {
    let _serial = serial();
    // A full 4 MiB header of garbage: read in 64 KiB doubling steps up to exactly 4 MiB (it
    // used to grow to 8 MiB when the buffer filled), then refused as malformed.
    let bytes = frame(MAX_HEADER_BYTES as u32, &vec![b'x'; MAX_HEADER_BYTES]);
    let (r, used) = measure(|| read_request(&bytes));
    assert!(matches!(r, Ok(Inbound::Malformed(_))), "{r:?}");
    println!("4 MiB header: {used:?}");
    assert!(used.largest <= MAX_HEADER_BYTES, "{used:?}");
    // A full 1 MiB payload.
    let ok = br#"{"type":"chunk"}"#;
    let mut bytes = frame(ok.len() as u32, ok);
    bytes.extend_from_slice(&frame(
        MAX_PAYLOAD_BYTES as u32,
        &vec![7; MAX_PAYLOAD_BYTES],
    ));
    let (r, used) = measure(|| read_response(&bytes));
    assert_eq!(r.unwrap().payload.len(), MAX_PAYLOAD_BYTES);
    println!("1 MiB payload: {used:?}");
    assert!(used.largest <= MAX_PAYLOAD_BYTES, "{used:?}");
}

/// A header within the limit costs about its size, whatever it holds: the codec decodes the
/// internally tagged requests without buffering them as a tree (serde's own decode held 100 MB
/// and a 64 MiB vector for the 4 MiB header of ignored zeros below). A known member of the
/// wrong shape fails at its first byte.
#[test]
fn headers_within_the_limit_cost_about_their_size() {
    let _serial = serial();
    let zeros = |open: &str| {
        let mut json = open.as_bytes().to_vec();
        while json.len() + 4 <= MAX_HEADER_BYTES {
            json.extend_from_slice(b"0,");
        }
        json.extend_from_slice(b"0]}");
        json
    };
    let task = "0000000000000000000000000000000000000000000000000000000000000000";
    let ignored = zeros(&format!(
        r#"{{"type":"settled","task_id":"{task}","balance":1,"junk":["#
    ));
    let wrong_shape = zeros(&format!(
        r#"{{"type":"progress","task_id":"{task}","job":1,"done":1,"total":2,"loss":["#
    ));
    for (name, json, accepted) in [
        ("ignored zeros", &ignored, true),
        ("a loss of zeros", &wrong_shape, false),
    ] {
        let (r, used) = measure(|| read_request(&frame(json.len() as u32, json)));
        assert_eq!(
            matches!(r, Ok(Inbound::Request(_))),
            accepted,
            "{name}: {r:?}"
        );
        println!(
            "4 MiB header of {name}: largest allocation {}, peak live {} ({:.1}x)",
            used.largest,
            used.peak,
            used.peak as f64 / json.len() as f64
        );
        assert!(
            used.largest <= MAX_HEADER_BYTES + (4 << 10),
            "{name}: {used:?}"
        );
        assert!(used.peak <= 5 * MAX_HEADER_BYTES, "{name}: {used:?}");
    }
}
