//! Framing of requests and replies on a libp2p stream: `u32` big-endian length, a JSON header,
//! then (replies only) a `u32` length and raw payload bytes. Both lengths are checked against
//! their limits before anything is allocated, so an oversized or garbage message costs the
//! receiver a few bytes of reading and ends with an error that penalises the sender.

use std::io;

use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::{Reply, Request, Response, MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES};

/// The request-response codec.
#[derive(Debug, Clone, Default)]
pub struct MarketCodec;

/// A request as read off a stream: well-formed, or what was wrong with it. (A read error would
/// vanish inside libp2p's request-response; a value reaches the event loop, which bans the
/// sender.)
// Almost every value is a request; boxing it would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A request.
    Request(Request),
    /// An oversized or undecodable frame, and why.
    Malformed(String),
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

async fn read_block<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
    what: &str,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(invalid(format!(
            "{what} of {len} bytes is over the limit of {limit}"
        )));
    }
    // Grow with the bytes that actually arrive: a peer announcing 4 MiB and sending nothing
    // costs the receiver nothing.
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what} ended after {} of {len} bytes", buf.len()),
        ));
    }
    Ok(buf)
}

async fn write_block<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid("block over 4 GiB".into()))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await
}

async fn read_header<M: DeserializeOwned, T: AsyncRead + Unpin + Send>(
    io: &mut T,
) -> io::Result<M> {
    let bytes = read_block(io, MAX_HEADER_BYTES, "header").await?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("malformed header: {e}")))
}

async fn write_header<M: Serialize, T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    m: &M,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(m).map_err(|e| invalid(e.to_string()))?;
    if bytes.len() > MAX_HEADER_BYTES {
        return Err(invalid(format!(
            "header of {} bytes is too big",
            bytes.len()
        )));
    }
    write_block(io, &bytes).await
}

impl libp2p::request_response::Codec for MarketCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound;
    type Response = Reply;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Inbound>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_header(io).await {
            Ok(r) => Ok(Inbound::Request(r)),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Ok(Inbound::Malformed(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Reply>
    where
        T: AsyncRead + Unpin + Send,
    {
        let response: Response = read_header(io).await?;
        let payload = read_block(io, MAX_PAYLOAD_BYTES, "payload").await?;
        Ok(Reply { response, payload })
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Inbound,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let Inbound::Request(req) = req else {
            return Err(invalid("a malformed request is never sent".into()));
        };
        write_header(io, &req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Reply,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if res.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(invalid("payload over one chunk".into()));
        }
        write_header(io, &res.response).await?;
        write_block(io, &res.payload).await?;
        io.close().await
    }
}
