//! Framing of requests and replies on a libp2p stream: `u32` big-endian length, a JSON header,
//! then (replies only) a `u32` length and raw payload bytes. Both lengths are checked against
//! their limits before anything is allocated, so an oversized or garbage message costs the
//! receiver a few bytes of reading and ends with an error that penalises the sender.

use std::io;

use std::borrow::Cow;

use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use market_protocol::{Commitment, F32Bits, Hello, Signed, TaskId, TaskSpec, Verdict};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::wire::{
    AuditJob, FileEntry, Manifest, Reply, Request, Response, Source, MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
};

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
    // Grow with the bytes that actually arrive, doubling from 64 KiB but never past the
    // announced length: a peer announcing 4 MiB and sending nothing costs the receiver 64 KiB,
    // and one sending all of it costs exactly its length. (`read_to_end` would double once
    // more when the buffer is exactly full, to 8 MiB for a 4 MiB header.)
    let mut buf = Vec::new();
    let mut filled = 0;
    while filled < len {
        if filled == buf.len() {
            let grow = buf.len().max(64 << 10).min(len - buf.len());
            buf.reserve_exact(grow);
            buf.resize(buf.len() + grow, 0);
        }
        match io.read(&mut buf[filled..]).await {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{what} ended after {filled} of {len} bytes"),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

async fn write_block<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid("block over 4 GiB".into()))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await
}

async fn read_header<M: Tagged, T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<M> {
    let bytes = read_block(io, MAX_HEADER_BYTES, "header").await?;
    decode_header(&bytes).map_err(|e| invalid(format!("malformed header: {e}")))
}

/// A header type: internally tagged by `type` on the wire, decoded through its externally
/// tagged twin (see [`decode_header`]).
pub trait Tagged: Sized {
    /// Decodes the externally tagged form, `{"<type>":{<the other members>}}`.
    fn from_external(text: &str) -> serde_json::Result<Self>;
}

impl Tagged for Request {
    fn from_external(text: &str) -> serde_json::Result<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let r = ExternalRequest::deserialize(&mut de)?;
        de.end()?;
        Ok(r)
    }
}

impl Tagged for Response {
    fn from_external(text: &str) -> serde_json::Result<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let r = ExternalResponse::deserialize(&mut de)?;
        de.end()?;
        Ok(r)
    }
}

/// Decodes a header (`spec/NETWORK.md` section 4) without buffering it as a tree.
///
/// serde decodes an internally tagged enum by first buffering the whole object as a tree of
/// its values, which costs 16 to 30 times the header: a 4 MiB header of ignored zeros held
/// 100 MB, and with 64 streams per connection that is a peer's lever on a node's memory. So
/// the object is first rewritten, from the raw texts of its members, into the externally
/// tagged form `{"<type>":{<the other members>}}`, which serde decodes field by field, and a
/// value of the wrong shape fails at its first byte. What is accepted is unchanged: any member
/// order and whitespace, unknown members ignored, a repeated member refused. A header that is
/// not an object, or whose `type` is not a string, is refused.
pub fn decode_header<M: Tagged>(bytes: &[u8]) -> serde_json::Result<M> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let text = de.deserialize_map(Retag)?;
    de.end()?;
    M::from_external(&text)
}

/// Rewrites `{"type":"T", members...}` as `{"T":{members...}}` (see [`decode_header`]).
struct Retag;

impl<'de> Visitor<'de> for Retag {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object with a string member `type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        let mut tag: Option<String> = None;
        let mut members = String::new();
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            if name == "type" {
                if tag.is_some() {
                    return Err(de::Error::duplicate_field("type"));
                }
                tag = Some(map.next_value()?);
                continue;
            }
            let value: &RawValue = map.next_value()?;
            if !members.is_empty() {
                members.push(',');
            }
            let name = serde_json::to_string(&name).map_err(de::Error::custom)?;
            members.push_str(&name);
            members.push(':');
            members.push_str(value.get());
        }
        let tag = tag.ok_or_else(|| de::Error::missing_field("type"))?;
        let tag = serde_json::to_string(&tag).map_err(de::Error::custom)?;
        // `{` tag `:{` members `}}`, shifting the members once instead of copying them.
        let prefix = format!("{{{tag}:{{");
        members.reserve_exact(prefix.len() + 2);
        members.insert_str(0, &prefix);
        members.push_str("}}");
        Ok(members)
    }
}

/// [`Request`], externally tagged: what [`decode_header`] decodes. serde's `remote` derive
/// builds a `Request` directly and its `Serialize` half matches every variant, so a variant
/// added to `Request` and not here does not compile.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Request", rename_all = "snake_case")]
#[allow(dead_code)] // Only the derives read the fields.
enum ExternalRequest {
    Hello {
        hello: Signed<Hello>,
    },
    Assign {
        task_id: TaskId,
        job: u64,
        task: TaskSpec,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot_round: Option<market_protocol::SlotRound>,
    },
    Progress {
        task_id: TaskId,
        job: u64,
        done: u32,
        total: u32,
        loss: F32Bits,
    },
    Done {
        task_id: TaskId,
        job: u64,
        commitment: Signed<Commitment>,
        manifest: Manifest,
    },
    Failed {
        task_id: TaskId,
        job: u64,
        reason: String,
    },
    Audit {
        job: AuditJob,
    },
    Verdict {
        task_id: TaskId,
        job: u64,
        verdict: Signed<Verdict>,
    },
    OpenSteps {
        task_id: TaskId,
        job: u64,
        segment: u32,
    },
    Cancel {
        task_id: TaskId,
        job: u64,
        reason: String,
    },
    Settled {
        task_id: TaskId,
        balance: u64,
    },
    Serving {
        offers: Vec<crate::wire::ServeOffer>,
    },
    Generate {
        request: u64,
        task: TaskSpec,
    },
    Text {
        request: u64,
        seq: u32,
        text: String,
    },
    Answered {
        request: u64,
        answer: Signed<market_protocol::Answer>,
        record: String,
    },
    Unanswered {
        request: u64,
        reason: String,
    },
    CheckAnswer {
        job: Box<crate::wire::AnswerCheckJob>,
    },
    AnswerChecked {
        job: u64,
        check: Signed<market_protocol::AnswerCheck>,
    },
    Describe {
        source: Source,
    },
    Fetch {
        source: Source,
        chunk: u32,
    },
}

/// [`Response`], externally tagged (see [`ExternalRequest`]). The variants without fields are
/// written with braces so that `{"ok":{...}}` decodes, ignoring members, as the tagged form did.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Response", rename_all = "snake_case")]
#[allow(dead_code)] // Only the derives read the fields.
enum ExternalResponse {
    Ok {},
    Welcome { stake: u64, balance: u64 },
    File { entry: FileEntry },
    Chunk {},
    Refused { reason: String },
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
