//! Chat templates rendered in a child process with memory and CPU limits.
//!
//! A task's or a served request's chat template comes from a client's blob, and minijinja's fuel
//! counts instructions, not what one instruction does: `'%99999999999999d'|format(1)` or a
//! string doubled with `~` allocates without bound, and comparing two lists nested forty deep
//! runs for days, in a few hundred fuel (COMPUTE 11.13). The node renders what clients send in
//! `market-template-sandbox`, a child process that sets its own address-space and CPU limits
//! before it reads anything, so such a template ends a child, and the post or request is
//! refused, while the node goes on. The child renders exactly as the node would
//! ([`TemplateRun::render_here`]); a task the node admits renders within its limits, so
//! workers and verifiers render it in their own process.
//!
//! The child is the node's own executable (`market-node`, `market-devnet`: their `main` calls
//! [`serve_as_child_if_asked`] first) started with [`CHILD_ARG`], or else the
//! `market-template-sandbox` program beside it (how test binaries find one).
//!
//! Request: the [`TemplateRun`] as JSON on the child's standard input. Reply on its standard
//! output: each text as `T`, its length (u32, little-endian) and its bytes; then `K` (every
//! chat rendered, or rendering stopped at the texts' limit), or `I` (on `inputs`) or `B` (on
//! the template) with a length and the reason of the chat that failed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use market_compute::llama::text::{
    RenderSandbox, Rendered, TemplateRun, MAX_PROMPT_BYTES, SANDBOX_STACK_BYTES,
};
use market_compute::{ComputeError, Result};
use wait_timeout::ChildExt;

/// The dedicated child program's file name.
pub const PROGRAM: &str = "market-template-sandbox";
/// The first argument that makes an executable the sandbox's child:
/// `EXE __market-template-sandbox MEMORY_BYTES CPU_SECS`.
pub const CHILD_ARG: &str = "__market-template-sandbox";
/// Whether this executable serves as its own sandbox ([`serve_as_child_if_asked`] ran).
static SELF_HOSTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Children rendering at once; more wait for one to end.
const MAX_RUNNING: usize = 4;
/// The longest request a child reads: a template (4 MiB) and chats (within a request body).
const MAX_REQUEST_BYTES: u64 = 256 << 20;
/// The longest failure reason a child may send.
const MAX_REASON_BYTES: usize = 64 << 10;
/// How long a rendering waits for one of the [`MAX_RUNNING`] children before it is refused
/// as the node being busy.
const SLOT_WAIT: Duration = Duration::from_secs(30);
/// The child's exit status when it failed on its own (its arguments, a request it cannot
/// parse, writing the reply): the node's fault. Any other failure (a signal at a limit, a
/// stack overflow, a request it could not read within its memory) is the template's.
const CHILD_FAILED: i32 = 2;
/// The child's exit status when the request did not fit its memory limit.
const REQUEST_TOO_BIG: i32 = 3;

/// The node's sandbox: where the child program is and the limits it runs under.
#[derive(Debug)]
pub struct TemplateSandbox {
    /// The child program, or why there is none.
    program: std::result::Result<PathBuf, String>,
    memory_bytes: u64,
    cpu_secs: u64,
    running: Mutex<usize>,
    freed: Condvar,
}

impl TemplateSandbox {
    /// A sandbox running `program` (by default this executable, if it serves as its own
    /// sandbox, else [`PROGRAM`] beside it or one folder up, where a test binary's is) with
    /// `memory_bytes` of address space and `cpu_secs` of CPU time per rendering.
    pub fn new(program: Option<&Path>, memory_bytes: u64, cpu_secs: u64) -> Self {
        let program = match program {
            Some(p) if p.is_file() => Ok(p.to_path_buf()),
            Some(p) => Err(format!("{} is not a file", p.display())),
            None if SELF_HOSTED.load(std::sync::atomic::Ordering::Relaxed) => {
                std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))
            }
            None => beside_this_executable(),
        };
        Self {
            program,
            memory_bytes,
            cpu_secs: cpu_secs.max(1),
            running: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Why the sandbox cannot run, if it cannot: the node warns at start.
    pub fn unavailable(&self) -> Option<&str> {
        self.program.as_ref().err().map(String::as_str)
    }

    /// What a template that needed more gets: an error on the template.
    fn over_limits(&self) -> Rendered {
        Rendered {
            texts: Vec::new(),
            failure: Some(ComputeError::InvalidBlob {
                what: "tokenizer",
                reason: format!(
                    "chat template: rendering the chats needs more than this node allows a \
                     template ({} MiB of memory, {} s of CPU time, {} MiB of stack)",
                    self.memory_bytes >> 20,
                    self.cpu_secs,
                    SANDBOX_STACK_BYTES >> 20
                ),
            }),
        }
    }

    /// One of the [`MAX_RUNNING`] children, waiting at most [`SLOT_WAIT`] for it.
    fn slot(&self) -> Result<Slot<'_>> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let (mut running, waited) = self
            .freed
            .wait_timeout_while(running, SLOT_WAIT, |n| *n >= MAX_RUNNING)
            .unwrap_or_else(|e| e.into_inner());
        if waited.timed_out() && *running >= MAX_RUNNING {
            return Err(sandbox_error(format!(
                "it is rendering {MAX_RUNNING} clients' templates and none ended in {}s: try again",
                SLOT_WAIT.as_secs()
            )));
        }
        *running += 1;
        Ok(Slot(self))
    }
}

/// One of the [`MAX_RUNNING`] children, given back when dropped.
struct Slot<'a>(&'a TemplateSandbox);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}

fn beside_this_executable() -> std::result::Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(PROGRAM))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{PROGRAM} is not beside {} (install it with the node, or set template_sandbox)",
                exe.display()
            )
        })
}

fn sandbox_error(what: impl std::fmt::Display) -> ComputeError {
    ComputeError::Sandbox(what.to_string())
}

impl RenderSandbox for TemplateSandbox {
    fn render(&self, run: &TemplateRun) -> Result<Rendered> {
        let program = self.program.as_ref().map_err(sandbox_error)?;
        let request = serde_json::to_vec(run).map_err(sandbox_error)?;
        if request.len() as u64 > MAX_REQUEST_BYTES {
            // Chats and a template (at most 4 MiB) too long to send: theirs, not the node's.
            return Ok(self.over_limits());
        }
        let _slot = self.slot()?;
        let mut child = Command::new(program)
            .arg(CHILD_ARG)
            .arg(self.memory_bytes.to_string())
            .arg(self.cpu_secs.to_string())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| sandbox_error(format!("cannot start {}: {e}", program.display())))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(sandbox_error("the child's pipes are missing"));
        };
        // Written and read on threads of their own, so neither side can block the other; a
        // child that ends early (at a limit) ends both.
        let writer = std::thread::spawn(move || stdin.write_all(&request));
        let reply_limit = (run.max_total_bytes + MAX_PROMPT_BYTES + MAX_REASON_BYTES) as u64
            + 5 * run.chats.len() as u64
            + 16;
        let reader = std::thread::spawn(move || read_capped(stdout, reply_limit));
        let errors = std::thread::spawn(move || read_capped(stderr, 16 << 10));
        // CPU time is limited in the child; this bounds the wall clock of one that waits.
        let wall = Duration::from_secs(3 * self.cpu_secs + 5);
        let status = match child.wait_timeout(wall).map_err(sandbox_error)? {
            Some(status) => Some(status),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        };
        let _ = writer.join();
        let reply = reader.join().unwrap_or_default();
        let errors = String::from_utf8_lossy(&errors.join().unwrap_or_default()).into_owned();
        let Some(status) = status else {
            tracing::warn!("a chat template ran past {wall:?} of wall clock in the sandbox");
            return Ok(self.over_limits());
        };
        if status.code() == Some(CHILD_FAILED) {
            // What it wrote stays in the node's log: a client is told only that the node
            // failed.
            tracing::error!(%status, errors = errors.trim(), "the template sandbox failed");
            return Err(sandbox_error(format!("its child exited with {status}")));
        }
        if !status.success() {
            // Killed at its CPU limit, aborted when an allocation failed at its memory limit
            // or when the template overflowed its stack.
            tracing::info!(%status, errors = errors.trim(), "a chat template hit the sandbox's limits");
            return Ok(self.over_limits());
        }
        parse_reply(&reply, run.chats.len()).map_err(sandbox_error)
    }
}

fn read_capped(from: impl Read, limit: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = from.take(limit).read_to_end(&mut out);
    out
}

fn parse_reply(mut reply: &[u8], chats: usize) -> std::result::Result<Rendered, String> {
    fn field<'a>(reply: &mut &'a [u8]) -> std::result::Result<&'a [u8], String> {
        let (len, rest) = reply.split_first_chunk::<4>().ok_or("a reply cut short")?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err("a reply cut short".into());
        }
        let (bytes, rest) = rest.split_at(len);
        *reply = rest;
        Ok(bytes)
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "a text that is not UTF-8");
    let mut out = Rendered::default();
    loop {
        let (&tag, rest) = reply.split_first().ok_or("a reply without its end")?;
        reply = rest;
        match tag {
            b'T' if out.texts.len() < chats => out.texts.push(text(field(&mut reply)?)?),
            b'K' => break,
            b'I' => {
                out.failure = Some(ComputeError::InvalidConfig {
                    field: "inputs",
                    reason: text(field(&mut reply)?)?,
                });
                break;
            }
            b'B' => {
                out.failure = Some(ComputeError::InvalidBlob {
                    what: "tokenizer",
                    reason: text(field(&mut reply)?)?,
                });
                break;
            }
            other => return Err(format!("an unknown reply tag {other}")),
        }
    }
    if !reply.is_empty() {
        return Err("bytes after the reply's end".into());
    }
    Ok(out)
}

fn write_field(out: &mut impl Write, tag: u8, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&[tag])?;
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

/// If this process was started as the sandbox's child ([`CHILD_ARG`] first), renders what
/// its standard input asks and exits; else marks this executable as its own sandbox and
/// returns. Called first in `main`, before any thread or runtime starts: the child's limits
/// are set before it reads anything a client wrote, and must not be spent on threads.
pub fn serve_as_child_if_asked() {
    if std::env::args_os().nth(1).as_deref() != Some(std::ffi::OsStr::new(CHILD_ARG)) {
        SELF_HOSTED.store(true, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    match child() {
        Ok(()) => std::process::exit(0),
        Err((code, e)) => {
            eprintln!("template sandbox: {e}");
            std::process::exit(code)
        }
    }
}

fn child() -> std::result::Result<(), (i32, String)> {
    let failed = |e: String| (CHILD_FAILED, e);
    use nix::sys::resource::{setrlimit, Resource};
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [memory, cpu] = args.as_slice() else {
        return Err(failed(format!(
            "usage: EXE {CHILD_ARG} MEMORY_BYTES CPU_SECS"
        )));
    };
    let memory: u64 = memory.parse().map_err(|e| failed(format!("memory: {e}")))?;
    let cpu: u64 = cpu.parse().map_err(|e| failed(format!("cpu: {e}")))?;
    // No core file of a child killed at its limits; SIGXCPU at `cpu` seconds, SIGKILL a
    // second later.
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| failed(format!("RLIMIT_CORE: {e}")))?;
    setrlimit(Resource::RLIMIT_CPU, cpu, cpu + 1)
        .map_err(|e| failed(format!("RLIMIT_CPU: {e}")))?;
    setrlimit(Resource::RLIMIT_AS, memory, memory)
        .map_err(|e| failed(format!("RLIMIT_AS: {e}")))?;
    let mut request = Vec::new();
    std::io::stdin()
        .take(MAX_REQUEST_BYTES)
        .read_to_end(&mut request)
        .map_err(|e| (REQUEST_TOO_BIG, format!("reading the request: {e}")))?;
    let run: TemplateRun =
        serde_json::from_slice(&request).map_err(|e| failed(format!("the request: {e}")))?;
    drop(request);
    let rendered = run
        .render_on_stack(SANDBOX_STACK_BYTES)
        .map_err(|e| failed(e.to_string()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = (|| {
        for text in &rendered.texts {
            write_field(&mut out, b'T', text.as_bytes())?;
        }
        match &rendered.failure {
            None => out.write_all(b"K")?,
            Some(ComputeError::InvalidConfig { reason, .. }) => {
                write_field(&mut out, b'I', clip(reason))?
            }
            Some(other) => {
                let reason = match other {
                    ComputeError::InvalidBlob { reason, .. } => reason.clone(),
                    e => e.to_string(),
                };
                write_field(&mut out, b'B', clip(&reason))?
            }
        }
        out.flush()
    })();
    written.map_err(|e| failed(format!("writing the reply: {e}")))
}

/// A reason cut to [`MAX_REASON_BYTES`], at a character boundary.
fn clip(reason: &str) -> &[u8] {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason.as_bytes()[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_reads_back_as_written() {
        let mut bytes = Vec::new();
        write_field(&mut bytes, b'T', "<|im_start|>user\nhi".as_bytes()).unwrap();
        write_field(&mut bytes, b'T', b"").unwrap();
        write_field(
            &mut bytes,
            b'I',
            b"a chat renders to more than 1048576 bytes",
        )
        .unwrap();
        let r = parse_reply(&bytes, 3).unwrap();
        assert_eq!(r.texts, ["<|im_start|>user\nhi", ""]);
        assert!(
            matches!(r.failure, Some(ComputeError::InvalidConfig { field: "inputs", ref reason }) if reason.contains("1048576"))
        );
        // More texts than chats, a cut, trailing bytes or no end are the sandbox's failure.
        assert!(parse_reply(&bytes, 1).is_err());
        assert!(parse_reply(&bytes[..bytes.len() - 1], 3).is_err());
        let mut trailing = bytes.clone();
        trailing.push(b'K');
        assert!(parse_reply(&trailing, 3).is_err());
        assert!(parse_reply(b"", 3).is_err());
        let ok = parse_reply(b"K", 3).unwrap();
        assert!(ok.texts.is_empty() && ok.failure.is_none());
    }
}
