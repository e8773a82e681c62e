//! Two peers in one process over loopback TCP: chunked transfer with verification and resume,
//! and a peer that sends garbage or oversized frames is banned while the node carries on.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use market_compute::BlobSource;
use market_net::participant::DirBlobs;
use market_net::transfer::{
    check_entry_root, chunk_reply, describe, describe_reply, entry_root, entry_with_tail,
    fetch_file, fetch_file_reusing, fetch_file_tail,
};
use market_net::wire::{Reply, Request, Response, Source, CHUNK_BYTES};
use market_net::{Event, Net, NetConfig};
use market_protocol::{BlobId, Identity};

fn loopback() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetConfig::default()
    }
}

/// Serves `path` as blob `id`; the first answer for chunk 1 has a flipped byte when `corrupt`.
fn serve_file(
    mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    path: std::path::PathBuf,
    id: BlobId,
    corrupt: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let Event::Request {
                request, responder, ..
            } = ev
            {
                let reply = match request {
                    Request::Describe {
                        source: Source::Blob { id: asked },
                    } if asked == id => describe_reply(&path, &id.to_string()),
                    Request::Fetch {
                        source: Source::Blob { id: asked },
                        chunk,
                    } if asked == id => {
                        let mut r = chunk_reply(&path, chunk);
                        if chunk == 1 && corrupt.swap(false, Ordering::SeqCst) {
                            r.payload[7] ^= 0x40;
                        }
                        r
                    }
                    _ => Reply::refused("no"),
                };
                responder.send(reply);
            }
        }
    });
}

/// A server peer serving `bytes` as a blob (from a file in `dir`), a client dialled to it, and
/// the blob's entry as the client got it.
struct Served {
    _server: Net,
    _client_events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    client: Net,
    peer: market_net::PeerId,
    source: Source,
    entry: market_net::wire::FileEntry,
    id: BlobId,
}

async fn served(dir: &std::path::Path, bytes: &[u8]) -> Served {
    let src = dir.join("src.bin");
    std::fs::write(&src, bytes).unwrap();
    let id = BlobId::of(bytes);
    let (server, server_events) =
        Net::start(&Identity::from_test_label("server"), loopback()).unwrap();
    serve_file(server_events, src, id, Arc::new(AtomicBool::new(false)));
    let addr = server.wait_listening().await.unwrap()[0].clone();
    let (client, client_events) =
        Net::start(&Identity::from_test_label("client"), NetConfig::default()).unwrap();
    let peer = client.dial(addr).await.unwrap();
    let source = Source::Blob { id };
    let entry = describe(&client, peer, source.clone()).await.unwrap();
    Served {
        _server: server,
        _client_events: client_events,
        client,
        peer,
        source,
        entry,
        id,
    }
}

/// A pooled slot's next start shares its optimizer moments, place for place, with the slot's
/// last final state: a fetch that may reuse that file copies the chunks it holds in the same
/// place (checked against the entry, whose root is the blob id) and fetches only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_a_local_file_holds_in_the_same_place_are_copied_not_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let mib = CHUNK_BYTES as usize;
    let bytes: Vec<u8> = (0..(4 * mib + 999)).map(|i| (i * 7 % 253) as u8).collect();
    let Served {
        _server,
        _client_events,
        client,
        peer,
        source,
        entry,
        id,
    } = served(dir.path(), &bytes).await;
    check_entry_root(&entry, &id.0).unwrap();

    // The local file: chunks 0 and 2 the same, chunk 1 and the last changed, and one chunk
    // more at its end.
    let mut local = bytes.clone();
    local[mib + 5] ^= 1;
    local[4 * mib + 3] ^= 1;
    local.extend_from_slice(&[9; 100]);
    let kept = dir.path().join("kept.st");
    std::fs::write(&kept, &local).unwrap();
    // The same bytes one place off, and a file that is not there: neither gives a chunk.
    let shifted = dir.path().join("shifted.st");
    std::fs::write(&shifted, [&[0u8][..], &bytes].concat()).unwrap();
    let sources = vec![dir.path().join("missing.st"), shifted, kept];
    let dest = dir.path().join("dest.bin");
    let stats = fetch_file_reusing(&client, peer, &source, &entry, &dest, &sources)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(stats.local_chunks, 3, "chunks 0, 2 and 3");
    assert_eq!(stats.received, (mib + 999) as u64, "chunk 1 and the last");

    // Without the local file every chunk travels.
    std::fs::remove_file(&dest).unwrap();
    let stats = fetch_file(&client, peer, &source, &entry, &dest)
        .await
        .unwrap();
    assert_eq!(stats.local_chunks, 0);
    assert_eq!(stats.received, bytes.len() as u64);
}

/// A pooled slot's final state holds its parameters in its last chunks: fetching the tail
/// moves only those, checked against the entry, and the rest of the file comes later into the
/// same place, nothing fetched twice. The entry of the file with another tail (a slot's next
/// start: the same moments, other parameters) is computed from the old chunk hashes and the
/// new tail alone, and is the entry of those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_is_fetched_alone_and_another_tail_gives_its_entry_without_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let mib = CHUNK_BYTES as usize;
    let bytes: Vec<u8> = (0..(4 * mib + 999)).map(|i| (i * 13 % 251) as u8).collect();
    let Served {
        _server,
        _client_events,
        client,
        peer,
        source,
        entry,
        id: _,
    } = served(dir.path(), &bytes).await;

    let dest = dir.path().join("dest.bin");
    let stats = fetch_file_tail(&client, peer, &source, &entry, &dest, 3)
        .await
        .unwrap();
    assert_eq!(stats.received, (mib + 999) as u64, "chunks 3 and 4 only");
    let held = std::fs::read(&dest).unwrap();
    assert_eq!(held.len(), bytes.len());
    assert_eq!(held[3 * mib..], bytes[3 * mib..]);
    assert!(
        held[..3 * mib].iter().all(|b| *b == 0),
        "the head is a hole"
    );
    let stats = fetch_file(&client, peer, &source, &entry, &dest)
        .await
        .unwrap();
    assert_eq!(stats.kept_chunks, 2);
    assert_eq!(stats.received, (3 * mib) as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);

    // Another tail from chunk 2 on (a boundary chunk whose start is kept, its end changed).
    let mut other = bytes.clone();
    for b in &mut other[2 * mib + 100..] {
        *b = b.wrapping_add(1);
    }
    let derived = entry_with_tail(&entry, 2, &other[2 * mib..]).unwrap();
    assert_eq!(entry_root(&derived).unwrap(), BlobId::of(&other).0);
    assert_eq!(derived.chunks[..2], entry.chunks[..2]);
    assert!(entry_with_tail(&entry, 2, &other[2 * mib + 1..]).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_is_detected_and_fetched_again_and_transfers_resume() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..(2 * CHUNK_BYTES as usize + 12345))
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &bytes).unwrap();
    let id = BlobId::of(&bytes);

    let (server, server_events) =
        Net::start(&Identity::from_test_label("server"), loopback()).unwrap();
    let corrupt = Arc::new(AtomicBool::new(true));
    serve_file(server_events, src, id, corrupt.clone());
    let addr = server.wait_listening().await.unwrap()[0].clone();
    let (client, _client_events) =
        Net::start(&Identity::from_test_label("client"), NetConfig::default()).unwrap();
    let peer = client.dial(addr).await.unwrap();
    assert_eq!(peer, server.peer_id());

    let source = Source::Blob { id };
    let entry = describe(&client, peer, source.clone()).await.unwrap();
    assert_eq!(entry.chunks.len(), 3);
    let dest = dir.path().join("dest.bin");
    let stats = fetch_file(&client, peer, &source, &entry, &dest)
        .await
        .unwrap();
    assert_eq!(stats.corrupt_chunks, 1, "the flipped byte was caught");
    assert!(!corrupt.load(Ordering::SeqCst));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        bytes,
        "and the chunk fetched again"
    );

    // Resume: a transfer cut after its first chunk keeps that chunk and fetches the rest.
    std::fs::write(&dest, &bytes[..CHUNK_BYTES as usize + 100]).unwrap();
    let stats = fetch_file(&client, peer, &source, &entry, &dest)
        .await
        .unwrap();
    assert_eq!(stats.kept_chunks, 1);
    assert_eq!(stats.received, bytes.len() as u64 - u64::from(CHUNK_BYTES));
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);

    // A chunk that is corrupted every time fails after exactly CHUNK_RETRIES fetches, naming it.
    let chunk0_fetches = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (bad, bad_events) = Net::start(&Identity::from_test_label("bad"), loopback()).unwrap();
    let bad_src = dir.path().join("bad.bin");
    std::fs::write(&bad_src, &bytes).unwrap();
    let counter = chunk0_fetches.clone();
    let mut bad_events = bad_events;
    tokio::spawn(async move {
        while let Some(ev) = bad_events.recv().await {
            if let Event::Request {
                request: Request::Fetch { chunk, .. },
                responder,
                ..
            } = ev
            {
                if chunk == 0 {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let mut r = chunk_reply(&bad_src, chunk);
                r.payload[0] ^= 1;
                responder.send(r);
            }
        }
    });
    let bad_peer = client
        .dial(bad.wait_listening().await.unwrap()[0].clone())
        .await
        .unwrap();
    let err = fetch_file(&client, bad_peer, &source, &entry, &dir.path().join("x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("chunk 0"), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("{} times", market_net::transfer::CHUNK_RETRIES)),
        "{err}"
    );
    assert_eq!(
        chunk0_fetches.load(Ordering::SeqCst),
        market_net::transfer::CHUNK_RETRIES,
        "fetched again exactly as many times as the retry limit says"
    );
}

/// A codec that writes whatever bytes it is given, to speak the market protocol badly.
#[derive(Clone, Default)]
struct RawCodec;

impl libp2p::request_response::Codec for RawCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &Self::Protocol, _: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        Ok(Vec::new())
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        use libp2p::futures::AsyncReadExt;
        let mut v = Vec::new();
        io.read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        use libp2p::futures::AsyncWriteExt;
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

/// Sends `frame` raw on the market protocol from a fresh attacker peer and returns its id and
/// what its request ended with.
async fn send_raw(
    addr: libp2p::Multiaddr,
    label: &str,
    frame: Vec<u8>,
) -> (libp2p::PeerId, String) {
    use libp2p::futures::StreamExt;
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;
    let key = Identity::from_test_label(label).to_libp2p_keypair();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::<RawCodec>::new(
                [(
                    libp2p::StreamProtocol::new(market_net::wire::PROTOCOL_NAME),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })
        .unwrap()
        .build();
    let me = *swarm.local_peer_id();
    let target: libp2p::PeerId = match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("address without a peer id"),
    };
    swarm.dial(addr).unwrap();
    swarm.behaviour_mut().send_request(&target, frame);
    let outcome = loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                break format!("failed: {error}")
            }
            SwarmEvent::Behaviour(request_response::Event::Message { .. }) => {
                break "answered".to_string()
            }
            _ => {}
        }
    };
    (me, outcome)
}

/// A lying node: it describes other bytes under a blob's id. The entry's chunk hashes do not
/// make the id, so the participant refuses it before fetching a byte (no part file is even
/// made), instead of downloading the whole file and finding out at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_described_as_other_bytes_is_refused_before_any_chunk_is_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..(2 * CHUNK_BYTES as usize + 5))
        .map(|i| (i % 249) as u8)
        .collect();
    let src = dir.path().join("other.bin");
    std::fs::write(&src, &bytes).unwrap();
    let claimed = BlobId::of(b"the bytes the task names");
    let (server, server_events) =
        Net::start(&Identity::from_test_label("lying blob server"), loopback()).unwrap();
    serve_file(
        server_events,
        src,
        claimed,
        Arc::new(AtomicBool::new(false)),
    );
    let addr = server.wait_listening().await.unwrap()[0].clone();
    let (client, _client_events) = Net::start(
        &Identity::from_test_label("careful client"),
        NetConfig::default(),
    )
    .unwrap();
    let peer = client.dial(addr).await.unwrap();
    let task = market_protocol::fixtures::training_task(&Identity::from_test_label("b"), 1);
    let cache_dir = dir.path().join("blobs");
    let cache = DirBlobs::new(&cache_dir);
    let err = cache
        .fetch_for_run(&client, peer, &task, &[claimed], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, market_net::transfer::TransferError::BadManifest(_)),
        "{err}"
    );
    let written: Vec<_> = std::fs::read_dir(&cache_dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "{written:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_needing_the_same_blob_fetch_it_once_into_the_shared_cache() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..(3 * CHUNK_BYTES as usize + 777))
        .map(|i| (i * 17 % 253) as u8)
        .collect();
    let src = dir.path().join("dataset.bin");
    std::fs::write(&src, &bytes).unwrap();
    let id = BlobId::of(&bytes);
    let (server, server_events) =
        Net::start(&Identity::from_test_label("blob server"), loopback()).unwrap();
    serve_file(server_events, src, id, Arc::new(AtomicBool::new(false)));
    let addr = server.wait_listening().await.unwrap()[0].clone();
    let (client, _client_events) = Net::start(
        &Identity::from_test_label("blob client"),
        NetConfig::default(),
    )
    .unwrap();
    let peer = client.dial(addr).await.unwrap();

    let buyer = Identity::from_test_label("blob buyer");
    let mut task = market_protocol::fixtures::training_task(&buyer, 1);
    if let market_protocol::Workload::Training(t) = &mut task.workload {
        t.dataset = market_protocol::DatasetSource::Blob { id };
    }
    assert_eq!(task.blobs(), [id]);
    // Two jobs at once, each with its own handle on the same cache directory.
    let cache = dir.path().join("blobs");
    let (a, b) = (DirBlobs::new(&cache), DirBlobs::new(&cache));
    let (sa, sb) = tokio::join!(
        a.fetch_for(&client, peer, &task),
        b.fetch_for(&client, peer, &task)
    );
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(
        sa.received + sb.received,
        bytes.len() as u64,
        "one fetch, the other found it cached"
    );
    assert_eq!(a.blob(&id).unwrap(), bytes);
    assert!(!cache.join(format!("{id}.part")).exists());
}

/// Serves each `(path, id)` as a blob.
fn serve_blobs(
    mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    blobs: Vec<(PathBuf, BlobId)>,
) {
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let Event::Request {
                request, responder, ..
            } = ev
            {
                let find = |asked: &BlobId| blobs.iter().find(|(_, id)| id == asked);
                let reply = match request {
                    Request::Describe {
                        source: Source::Blob { id },
                    } => match find(&id) {
                        Some((path, id)) => describe_reply(path, &id.to_string()),
                        None => Reply::refused("no"),
                    },
                    Request::Fetch {
                        source: Source::Blob { id },
                        chunk,
                    } => match find(&id) {
                        Some((path, _)) => chunk_reply(path, chunk),
                        None => Reply::refused("no"),
                    },
                    _ => Reply::refused("no"),
                };
                responder.send(reply);
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blob_cache_forgets_the_least_recently_used_beyond_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let buyer = Identity::from_test_label("cache buyer");
    let size = CHUNK_BYTES as usize + 100;
    let mut blobs = Vec::new();
    let mut tasks = Vec::new();
    for k in 0..3u8 {
        let bytes: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(k + 3)).collect();
        let path = dir.path().join(format!("dataset-{k}.bin"));
        std::fs::write(&path, &bytes).unwrap();
        let id = BlobId::of(&bytes);
        blobs.push((path, id));
        let mut task = market_protocol::fixtures::training_task(&buyer, u64::from(k));
        if let market_protocol::Workload::Training(t) = &mut task.workload {
            t.dataset = market_protocol::DatasetSource::Blob { id };
        }
        tasks.push(task);
    }
    let ids: Vec<BlobId> = blobs.iter().map(|(_, id)| *id).collect();
    let (server, server_events) =
        Net::start(&Identity::from_test_label("cache server"), loopback()).unwrap();
    serve_blobs(server_events, blobs);
    let addr = server.wait_listening().await.unwrap()[0].clone();
    let (client, _events) = Net::start(
        &Identity::from_test_label("cache client"),
        NetConfig::default(),
    )
    .unwrap();
    let peer = client.dial(addr).await.unwrap();

    // Room for two blobs.
    let cache = DirBlobs::new(dir.path().join("blobs")).with_limit(2 * size as u64);
    let cached = |id: &BlobId| cache.blob(id).is_some();
    for task in &tasks[..2] {
        cache.fetch_for(&client, peer, task).await.unwrap();
    }
    assert!(cached(&ids[0]) && cached(&ids[1]));
    // Using the first again makes the second the least recently used: the third evicts it.
    let again = cache.fetch_for(&client, peer, &tasks[0]).await.unwrap();
    assert_eq!(again.received, 0, "still cached");
    cache.fetch_for(&client, peer, &tasks[2]).await.unwrap();
    assert!(cached(&ids[0]) && !cached(&ids[1]) && cached(&ids[2]));
    // The task at hand keeps its blob whatever the limit.
    let tiny = DirBlobs::new(dir.path().join("blobs")).with_limit(1);
    tiny.fetch_for(&client, peer, &tasks[1]).await.unwrap();
    assert!(cached(&ids[1]));
    assert!(!cached(&ids[0]) && !cached(&ids[2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_messages_get_the_sender_banned_and_the_node_carries_on() {
    let (node, mut events) = Net::start(&Identity::from_test_label("node"), loopback()).unwrap();
    let addr = node.wait_listening().await.unwrap()[0].clone();
    // The node answers every well-formed request with Ok and reports misbehaviour.
    let (bans_tx, mut bans) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                Event::Request { responder, .. } => responder.send(Reply::of(Response::Ok)),
                Event::Misbehaved { peer, reason } => {
                    let _ = bans_tx.send((peer, reason));
                }
                _ => {}
            }
        }
    });

    // A frame announcing 4 GiB: refused on the length alone, nothing allocated.
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    let (liar, _) = send_raw(addr.clone(), "oversized", huge).await;
    let (peer, reason) = tokio::time::timeout(Duration::from_secs(10), bans.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer, liar);
    assert!(reason.contains("over the limit"), "{reason}");

    // A well-sized frame of garbage.
    let mut garbage = 9u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(b"not json!");
    let (babbler, _) = send_raw(addr.clone(), "garbage", garbage).await;
    let (peer, reason) = tokio::time::timeout(Duration::from_secs(10), bans.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer, babbler);
    assert!(reason.contains("malformed"), "{reason}");

    // Banned: the babbler cannot even get a well-formed request through any more.
    let mut fine = Vec::new();
    let body = br#"{"type":"describe","source":{"kind":"blob","id":"0000000000000000000000000000000000000000000000000000000000000000"}}"#;
    fine.extend_from_slice(&(body.len() as u32).to_be_bytes());
    fine.extend_from_slice(body);
    let (_, outcome) = send_raw(addr.clone(), "garbage", fine.clone()).await;
    assert!(
        outcome.starts_with("failed"),
        "banned peer got through: {outcome}"
    );

    // The node is unaffected: an honest peer's request is answered.
    let (honest, _e) =
        Net::start(&Identity::from_test_label("honest"), NetConfig::default()).unwrap();
    let peer = honest.dial(addr).await.unwrap();
    let reply = honest
        .request(
            peer,
            Request::Describe {
                source: Source::Blob {
                    id: BlobId::of(b"x"),
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(reply.response, Response::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_cannot_be_dialled_is_reachable_through_its_nodes_relay() {
    use libp2p::multiaddr::Protocol;
    // The node relays (as market nodes do).
    let (node, _node_events) = Net::start(
        &Identity::from_test_label("relay node"),
        NetConfig {
            relay_server: true,
            ..loopback()
        },
    )
    .unwrap();
    let node_addr = node.wait_listening().await.unwrap()[0].clone();
    // A worker that listens nowhere itself (as behind NAT) dials the node and takes a
    // reservation on it.
    let (worker, mut worker_events) = Net::start(
        &Identity::from_test_label("natted worker"),
        NetConfig::default(),
    )
    .unwrap();
    worker.dial(node_addr.clone()).await.unwrap();
    worker
        .listen(node_addr.clone().with(Protocol::P2pCircuit))
        .await
        .unwrap();
    let circuit = loop {
        match tokio::time::timeout(Duration::from_secs(10), worker_events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Listening { addr } if addr.iter().any(|p| p == Protocol::P2pCircuit) => {
                break addr
            }
            _ => {}
        }
    };
    tokio::spawn(async move {
        while let Some(ev) = worker_events.recv().await {
            if let Event::Request { responder, .. } = ev {
                responder.send(Reply::of(Response::Ok));
            }
        }
    });
    // Someone else reaches the worker through the relay address.
    let (other, _e) = Net::start(
        &Identity::from_test_label("other peer"),
        NetConfig::default(),
    )
    .unwrap();
    let target = circuit.with_p2p(worker.peer_id()).unwrap_or_else(|a| a);
    let peer = other.dial(target).await.unwrap();
    assert_eq!(peer, worker.peer_id());
    let reply = other
        .request(
            peer,
            Request::Describe {
                source: Source::Blob {
                    id: BlobId::of(b"y"),
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(reply.response, Response::Ok);
}
