//! Bundle transfer throughput on loopback (`cargo bench -p market-net`): a 64 MiB file fetched
//! over libp2p (TCP and QUIC; noise, yamux; 1 MiB chunks, each checked against its blake3 hash
//! and written to disk) against a plain TCP copy of the same bytes into a file, in the same run.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // A benchmark binary reports on stdout.

use std::time::Instant;

use market_net::transfer::{chunk_reply, describe, describe_reply, fetch_file};
use market_net::wire::{Reply, Request, Source};
use market_net::{Event, Multiaddr, Net, NetConfig};
use market_protocol::{BlobId, Identity};

const BYTES: usize = 64 << 20;
const ROUNDS: usize = 3;

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

async fn libp2p_round(
    listen: &str,
    path: &std::path::Path,
    id: BlobId,
    out: &std::path::Path,
    label: &str,
) -> f64 {
    let (server, mut events) = Net::start(
        &Identity::from_test_label(&format!("bench server {label}")),
        NetConfig {
            listen: vec![listen.parse().unwrap()],
            ..NetConfig::default()
        },
    )
    .unwrap();
    let p = path.to_owned();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let Event::Request {
                request, responder, ..
            } = ev
            {
                let p = p.clone();
                // Chunks are read off the event loop's thread, as the node does.
                tokio::task::spawn_blocking(move || {
                    responder.send(match request {
                        Request::Describe { .. } => describe_reply(&p, &id.to_string()),
                        Request::Fetch { chunk, .. } => chunk_reply(&p, chunk),
                        _ => Reply::refused("no"),
                    })
                });
            }
        }
    });
    let addr: Multiaddr = server.wait_listening().await.unwrap()[0].clone();
    let (client, _e) = Net::start(
        &Identity::from_test_label(&format!("bench client {label}")),
        NetConfig::default(),
    )
    .unwrap();
    let peer = client.dial(addr).await.unwrap();
    let source = Source::Blob { id };
    let _ = std::fs::remove_file(out);
    let start = Instant::now();
    let entry = describe(&client, peer, source.clone()).await.unwrap();
    let stats = fetch_file(&client, peer, &source, &entry, out)
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(stats.received as usize, BYTES);
    secs
}

/// The baseline: blocking std TCP and std file writes (the same file API `fetch_file` uses),
/// 1 MiB reads, one fsync at the end.
async fn tcp_round(path: &std::path::Path, out: &std::path::Path) -> f64 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let p = path.to_owned();
    let server = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        std::io::copy(&mut f, &mut sock).unwrap();
    });
    let _ = std::fs::remove_file(out);
    let out = out.to_owned();
    let (n, secs) = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        let mut f = std::fs::File::create(&out).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        loop {
            let k = sock.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            f.write_all(&buf[..k]).unwrap();
            n += k;
        }
        f.sync_all().unwrap();
        (n, start.elapsed().as_secs_f64())
    })
    .await
    .unwrap();
    server.join().unwrap();
    assert_eq!(n, BYTES);
    secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bundle.bin");
    let bytes: Vec<u8> = (0..BYTES)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &bytes).unwrap();
    let id = BlobId::of(&bytes);
    let out = dir.path().join("out.bin");
    let (mut tcp, mut p2p_tcp, mut p2p_quic) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        tcp.push(mbps(BYTES, tcp_round(&src, &out).await));
        p2p_tcp.push(mbps(
            BYTES,
            libp2p_round(
                "/ip4/127.0.0.1/tcp/0",
                &src,
                id,
                &out,
                &format!("tcp {round}"),
            )
            .await,
        ));
        assert_eq!(std::fs::read(&out).unwrap(), bytes);
        p2p_quic.push(mbps(
            BYTES,
            libp2p_round(
                "/ip4/127.0.0.1/udp/0/quic-v1",
                &src,
                id,
                &out,
                &format!("quic {round}"),
            )
            .await,
        ));
    }
    let (t, pt, pq) = (
        median(tcp.clone()),
        median(p2p_tcp.clone()),
        median(p2p_quic.clone()),
    );
    println!(
        "transfer of {} MiB on loopback, median of {ROUNDS} rounds (all rounds in MB/s):",
        BYTES >> 20
    );
    println!("  plain TCP copy to a file          {t:8.1} MB/s  {tcp:.0?}");
    println!(
        "  libp2p TCP, verified 1 MiB chunks {pt:8.1} MB/s  {p2p_tcp:.0?}  ratio {:.2}",
        pt / t
    );
    println!(
        "  libp2p QUIC, verified 1 MiB chunks{pq:8.1} MB/s  {p2p_quic:.0?}  ratio {:.2}",
        pq / t
    );
}
