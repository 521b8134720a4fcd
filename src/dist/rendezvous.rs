//! How the ranks of a run meet: rank 0 hands every rank a payload (the NCCL
//! unique id), and the ranks check that they agree on the world size and on what
//! they run ([`RunId`]: the config's hash and hgpt's version), so a rank started
//! with another config is refused by name before any training.
//!
//! Over TCP (`Init::Tcp`): rank 0 listens on the master port; every other rank
//! connects (retrying until the timeout) and sends one line,
//! `hgpt-rendezvous rank=R world=W version=V config=H`. Once all have arrived and
//! agree, rank 0 answers each `go <payload hex>`; otherwise `refused <line>` with
//! the line that ends the run (the rank at fault, or the ranks that never
//! arrived). The connections then stay open as the [`Heartbeat`]: each side sends
//! `ping` every second; a connection that closes (its process died) or stays
//! silent too long, or a `fail <line>` from a rank that errored, ends the run on
//! every rank, which rank 0 relays as `down <line>`; `bye` is a clean end.
//!
//! Through a shared file (`Init::File`): rank 0 writes PATH (atomically, by
//! rename) with the world size, the run id, a fresh nonce and the payload, in
//! state `waiting`; each other rank reads it and answers with PATH.rank<R>
//! holding its own values and that nonce; when every rank has answered and
//! agrees, rank 0 rewrites PATH in state `go` (or `refused <line>`). A rank takes
//! `go` only under the nonce it answered, so a file left by an earlier run is
//! never mistaken for this one's. A file rendezvous has no heartbeat.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use super::Place;
use crate::config::Config;

/// How the ranks meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Init {
    /// Rank 0 listens on `port` (all interfaces); the others connect to `host:port`.
    Tcp { host: String, port: u16 },
    /// A file on a filesystem every rank sees.
    File(PathBuf),
}

/// What every rank must run alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunId {
    /// The first 16 hex digits of the SHA-256 of the config's TOML.
    pub config: String,
    /// hgpt's version.
    pub version: String,
}

impl RunId {
    pub fn of(config: &Config) -> RunId {
        let digest = Sha256::digest(config.to_toml().as_bytes());
        RunId {
            config: hex(&digest[..8]),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Why rank `rank` running `theirs` cannot join rank 0 running `self`, if so.
    fn differs(&self, rank: usize, theirs: &RunId) -> Option<String> {
        if self.version != theirs.version {
            Some(format!(
                "rank {rank} runs hgpt {}, rank 0 runs hgpt {}: every rank must run the same build",
                theirs.version, self.version
            ))
        } else if self.config != theirs.config {
            Some(format!(
                "rank {rank}'s config differs from rank 0's (config hash {} vs {}): every rank must run the same config and overrides",
                theirs.config, self.config
            ))
        } else {
            None
        }
    }
}

/// The rendezvous's clocks.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long the ranks wait for each other to arrive.
    pub arrive: Duration,
    /// How often a heartbeat is sent.
    pub ping: Duration,
    /// How long a silent peer is taken to be alive (several pings).
    pub silence: Duration,
}

impl Timing {
    /// `arrive` for the meeting; a ping a second, and 30 s of silence ends the run.
    pub fn new(arrive: Duration) -> Timing {
        Timing {
            arrive,
            ping: Duration::from_secs(1),
            silence: Duration::from_secs(30),
        }
    }
}

/// The rendezvous's outcome: rank 0's payload and the watch over the peers.
pub struct Joined {
    pub payload: Vec<u8>,
    pub heartbeat: Heartbeat,
}

/// Meets the other ranks of `place.world`. Rank 0 gives `payload` (which it must
/// have); every rank gets it back. A lone rank meets no one.
pub fn join(
    place: Place,
    init: &Init,
    run: &RunId,
    payload: Option<&[u8]>,
    timing: Timing,
) -> Result<Joined> {
    let payload = match (place.rank, payload) {
        (0, Some(p)) => Some(p.to_vec()),
        (0, None) => bail!("rank 0 must bring the payload to the rendezvous"),
        (_, _) => None,
    };
    if place.world == 1 {
        return Ok(Joined {
            payload: payload.expect("rank 0"),
            heartbeat: Heartbeat::start(0, Vec::new(), timing),
        });
    }
    match (init, payload) {
        (Init::Tcp { port, .. }, Some(p)) => tcp_host(place, *port, run, p, timing),
        (Init::Tcp { host, port }, None) => tcp_join(place, host, *port, run, timing),
        (Init::File(path), Some(p)) => file_host(place, path, run, p, timing.arrive),
        (Init::File(path), None) => file_join(place, path, run, timing.arrive),
    }
}

/// The first line a rank sends rank 0.
fn hello(place: Place, run: &RunId) -> String {
    format!(
        "hgpt-rendezvous rank={} world={} version={} config={}",
        place.rank, place.world, run.version, run.config
    )
}

/// `key=value` words of a line (or file), by key.
fn fields(text: &str) -> HashMap<&str, &str> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// A rank's place and run id from its hello (or its answer file); None if the
/// text is not one.
fn parse_hello(text: &str) -> Option<(usize, usize, RunId)> {
    let f = fields(text);
    Some((
        f.get("rank")?.parse().ok()?,
        f.get("world")?.parse().ok()?,
        RunId {
            version: f.get("version")?.to_string(),
            config: f.get("config")?.to_string(),
        },
    ))
}

/// Why rank 0 (`world` ranks, running `run`) refuses a peer's hello, if it does.
fn check_peer(
    world: usize,
    run: &RunId,
    rank: usize,
    their_world: usize,
    theirs: &RunId,
) -> Option<String> {
    if their_world != world {
        Some(format!(
            "rank {rank} was started for {their_world} ranks, rank 0 for {world}: every rank must see the same world size"
        ))
    } else {
        run.differs(rank, theirs)
    }
}

/// "rank 2" or "ranks 2, 3" of those in `ranks`.
fn name_ranks(ranks: &[usize]) -> String {
    let list: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
    match list.len() {
        1 => format!("rank {}", list[0]),
        _ => format!("ranks {}", list.join(", ")),
    }
}

fn missing_line(missing: &[usize], world: usize, arrive: Duration) -> String {
    format!(
        "{} of {world} did not arrive at the rendezvous within {}s",
        name_ranks(missing),
        arrive.as_secs_f64()
    )
}

/// Rank 0 over TCP: waits for every rank, checks them, hands out the payload.
fn tcp_host(
    place: Place,
    port: u16,
    run: &RunId,
    payload: Vec<u8>,
    timing: Timing,
) -> Result<Joined> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("rank 0 cannot listen on port {port} (MASTER_PORT)"))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timing.arrive;
    let mut peers: Vec<Option<TcpStream>> = (0..place.world).map(|_| None).collect();
    // Every arrived rank hears the line that ends the run.
    let refuse = |peers: &mut [Option<TcpStream>], line: String| -> anyhow::Error {
        for s in peers.iter_mut().flatten() {
            let _ = writeln!(s, "refused {line}");
        }
        anyhow!(line)
    };
    loop {
        let missing: Vec<usize> = (1..place.world).filter(|&r| peers[r].is_none()).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(refuse(
                &mut peers,
                missing_line(&missing, place.world, timing.arrive),
            ));
        }
        match listener.accept() {
            Ok((stream, from)) => {
                // Not a rank (a port scan, a stray client): ignored.
                let Some((rank, world, theirs, stream)) = read_hello(stream) else {
                    continue;
                };
                if rank == 0 || rank >= place.world {
                    return Err(refuse(
                        &mut peers,
                        format!(
                            "a process at {from} claims rank {rank} of {world}, but rank 0 runs {} ranks",
                            place.world
                        ),
                    ));
                }
                if peers[rank].is_some() {
                    return Err(refuse(
                        &mut peers,
                        format!(
                            "two processes claim rank {rank} (the second from {from}): check the launcher's rank variables"
                        ),
                    ));
                }
                peers[rank] = Some(stream);
                if let Some(line) = check_peer(place.world, run, rank, world, &theirs) {
                    return Err(refuse(&mut peers, line));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if let Some(rank) =
                    (1..place.world).find(|&r| peers[r].as_ref().is_some_and(closed))
                {
                    peers[rank] = None;
                    return Err(refuse(
                        &mut peers,
                        format!(
                            "rank {rank} left the rendezvous before it completed (its process ended)"
                        ),
                    ));
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("rank 0's rendezvous listener failed"),
        }
    }
    let go = format!("go {}", hex(&payload));
    let mut conns = Vec::new();
    for (rank, stream) in peers.into_iter().enumerate().skip(1) {
        let mut stream = stream.expect("every rank arrived");
        writeln!(stream, "{go}").with_context(|| format!("cannot answer rank {rank}"))?;
        conns.push((rank, stream));
    }
    Ok(Joined {
        payload,
        heartbeat: Heartbeat::start(0, conns, timing),
    })
}

/// A new connection's hello, read within a few seconds.
fn read_hello(stream: TcpStream) -> Option<(usize, usize, RunId, TcpStream)> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut line = String::new();
    BufReader::new(stream.try_clone().ok()?)
        .take(4096)
        .read_line(&mut line)
        .ok()?;
    if !line.starts_with("hgpt-rendezvous ") {
        return None;
    }
    let (rank, world, run) = parse_hello(&line)?;
    Some((rank, world, run, stream))
}

/// Whether the peer has closed `stream` (it has nothing to send before `go`).
fn closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let gone = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    gone || stream.set_nonblocking(false).is_err()
}

/// A rank other than 0 over TCP: reaches rank 0, says who it is, waits for `go`.
fn tcp_join(place: Place, host: &str, port: u16, run: &RunId, timing: Timing) -> Result<Joined> {
    let deadline = Instant::now() + timing.arrive;
    let wait = timing.arrive.as_secs_f64();
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("MASTER_ADDR={host}: cannot resolve the host"))?
        .collect();
    let mut stream = connect_until(&addrs, deadline).map_err(|e| {
        anyhow!(
            "rank {} could not reach rank 0 at {host}:{port} within {wait}s ({e})",
            place.rank
        )
    })?;
    stream.set_nodelay(true)?;
    writeln!(stream, "{}", hello(place, run)).with_context(|| {
        format!(
            "rank {} cannot write to rank 0 at {host}:{port}",
            place.rank
        )
    })?;
    // Rank 0 keeps the time and answers when it is up; the grace covers its
    // clock having started later than this rank's.
    let left = deadline.saturating_duration_since(Instant::now());
    stream.set_read_timeout(Some(left + RANK_0_GRACE))?;
    let mut line = String::new();
    let read = BufReader::new(stream.try_clone()?).read_line(&mut line);
    let line = line.trim_end();
    if let Some(hex_payload) = line.strip_prefix("go ") {
        let payload =
            unhex(hex_payload).ok_or_else(|| anyhow!("rank 0 sent a malformed payload"))?;
        return Ok(Joined {
            payload,
            heartbeat: Heartbeat::start(place.rank, vec![(0, stream)], timing),
        });
    }
    if let Some(why) = line.strip_prefix("refused ") {
        bail!("{why}");
    }
    match read {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => bail!(
            "rank {} reached rank 0 at {host}:{port}, but rank 0 did not answer within {}s",
            place.rank,
            (timing.arrive + RANK_0_GRACE).as_secs_f64()
        ),
        _ => bail!(
            "rank 0 at {host}:{port} closed the rendezvous without an answer (its process ended)"
        ),
    }
}

/// How much longer than its own wait a rank waits for rank 0's answer.
const RANK_0_GRACE: Duration = Duration::from_secs(10);

/// A connection to one of `addrs`, retried until `deadline` (rank 0 may start
/// later than this rank).
fn connect_until(addrs: &[SocketAddr], deadline: Instant) -> std::io::Result<TcpStream> {
    loop {
        let mut last = std::io::Error::new(ErrorKind::NotFound, "the host has no address");
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            let try_for = left.clamp(Duration::from_millis(10), Duration::from_secs(2));
            match TcpStream::connect_timeout(addr, try_for) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Rank 0 through a file: writes it, waits for every rank's answer, says go.
fn file_host(
    place: Place,
    path: &Path,
    run: &RunId,
    payload: Vec<u8>,
    arrive: Duration,
) -> Result<Joined> {
    let nonce = format!("{:016x}", rand::random::<u64>());
    let body = format!(
        "world={} version={} config={} nonce={nonce} payload={}",
        place.world,
        run.version,
        run.config,
        hex(&payload)
    );
    let answers: Vec<PathBuf> = (0..place.world).map(|r| answer_path(path, r)).collect();
    for answer in &answers[1..] {
        let _ = std::fs::remove_file(answer);
    }
    write_atomically(path, &format!("state=waiting {body}\n"))?;
    let deadline = Instant::now() + arrive;
    let mut arrived = vec![false; place.world];
    arrived[0] = true;
    let outcome = 'wait: loop {
        for rank in 1..place.world {
            if arrived[rank] {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&answers[rank]) else {
                continue;
            };
            if fields(&text).get("nonce") != Some(&nonce.as_str()) {
                continue; // an answer to an earlier run's file
            }
            arrived[rank] = true;
            let refusal = match parse_hello(&text) {
                Some((r, world, theirs)) if r == rank => {
                    check_peer(place.world, run, rank, world, &theirs)
                }
                _ => Some(format!(
                    "{} is not a rendezvous answer",
                    answers[rank].display()
                )),
            };
            if let Some(line) = refusal {
                break 'wait Err(line);
            }
        }
        let missing: Vec<usize> = (0..place.world).filter(|&r| !arrived[r]).collect();
        if missing.is_empty() {
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err(missing_line(&missing, place.world, arrive));
        }
        thread::sleep(Duration::from_millis(50));
    };
    let text = match &outcome {
        Ok(()) => format!("state=go {body}\n"),
        Err(line) => format!("state=refused {body}\nwhy {line}\n"),
    };
    write_atomically(path, &text)?;
    for answer in &answers[1..] {
        let _ = std::fs::remove_file(answer);
    }
    outcome.map_err(|line| anyhow!(line))?;
    Ok(Joined {
        payload,
        heartbeat: Heartbeat::start(0, Vec::new(), Timing::new(arrive)),
    })
}

/// A rank other than 0 through a file: reads rank 0's, answers, waits for go.
fn file_join(place: Place, path: &Path, run: &RunId, arrive: Duration) -> Result<Joined> {
    let deadline = Instant::now() + arrive;
    let mut answered: Option<String> = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let f = fields(text.lines().next().unwrap_or_default());
            let nonce = f.get("nonce").copied().unwrap_or_default();
            let ours = answered.as_deref() == Some(nonce);
            match f.get("state").copied() {
                Some("waiting") if !ours => {
                    let answer = format!("{} nonce={nonce}\n", hello(place, run));
                    write_atomically(&answer_path(path, place.rank), &answer)?;
                    answered = Some(nonce.to_string());
                    let world = f.get("world").and_then(|w| w.parse().ok()).unwrap_or(0);
                    let rank0 = RunId {
                        version: f.get("version").copied().unwrap_or_default().to_string(),
                        config: f.get("config").copied().unwrap_or_default().to_string(),
                    };
                    if let Some(line) = check_peer(world, &rank0, place.rank, place.world, run) {
                        bail!("{line}");
                    }
                }
                Some("go") if ours => {
                    let payload = f
                        .get("payload")
                        .and_then(|p| unhex(p))
                        .ok_or_else(|| anyhow!("{}: a malformed payload", path.display()))?;
                    return Ok(Joined {
                        payload,
                        heartbeat: Heartbeat::start(place.rank, Vec::new(), Timing::new(arrive)),
                    });
                }
                Some("refused") if ours => {
                    let why = text
                        .lines()
                        .find_map(|l| l.strip_prefix("why "))
                        .unwrap_or("refused");
                    bail!("{why}");
                }
                _ => {}
            }
        }
        let grace = if answered.is_some() {
            RANK_0_GRACE
        } else {
            Duration::ZERO
        };
        if Instant::now() >= deadline + grace {
            bail!(
                "rank {} waited {}s at {} for rank 0 {}",
                place.rank,
                (arrive + grace).as_secs_f64(),
                path.display(),
                if answered.is_some() {
                    "to say go"
                } else {
                    "to write it"
                }
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Where rank `rank` answers rank 0's file `path`: PATH.rank<R>.
fn answer_path(path: &Path, rank: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".rank{rank}"));
    PathBuf::from(name)
}

/// Writes `text` to `path` by renaming a finished temporary file over it, so a
/// reader sees the old file or the new one, never part of one.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The watch over a rank's peers after the rendezvous (rank 0 watches every
/// rank, the others watch rank 0). When a peer is lost, [`Heartbeat::lost`]
/// returns the line naming it, for the training loop to poll, and the hook set by
/// [`Heartbeat::on_lost`] runs once on the watching thread, for a caller that
/// must abort at once (a rank blocked in a collective).
pub struct Heartbeat {
    shared: Arc<Shared>,
    conns: Vec<(usize, Arc<Mutex<TcpStream>>)>,
}

type Hook = Box<dyn FnOnce(&str) + Send>;

struct Shared {
    /// The first loss, and the hook not yet run.
    state: Mutex<(Option<String>, Option<Hook>)>,
    /// This rank has ended (`finish` or `fail`): closing connections are expected.
    ended: AtomicBool,
}

impl Shared {
    /// Records the first loss and runs the hook with it.
    fn lose(&self, line: String) {
        if self.ended.load(Ordering::SeqCst) {
            return;
        }
        let hook = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.0.is_some() {
                return;
            }
            state.0 = Some(line.clone());
            state.1.take()
        };
        if let Some(hook) = hook {
            hook(&line);
        }
    }
}

impl Heartbeat {
    /// Watches `conns` (peer rank, stream) from rank `rank`: a reader thread per
    /// connection and one thread sending pings.
    fn start(rank: usize, conns: Vec<(usize, TcpStream)>, timing: Timing) -> Heartbeat {
        let shared = Arc::new(Shared {
            state: Mutex::new((None, None)),
            ended: AtomicBool::new(false),
        });
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for (peer, stream) in conns {
            let _ = stream.set_read_timeout(Some(timing.silence));
            let _ = stream.set_write_timeout(Some(timing.silence));
            match stream.try_clone() {
                Ok(reader) => readers.push((peer, reader)),
                Err(e) => shared.lose(format!("rank {rank} cannot watch rank {peer}: {e}")),
            }
            writers.push((peer, Arc::new(Mutex::new(stream))));
        }
        for (peer, reader) in readers {
            let (shared, writers) = (Arc::clone(&shared), writers.clone());
            thread::spawn(move || watch(rank, peer, reader, &shared, &writers, timing));
        }
        let (shared_ping, writers_ping) = (Arc::clone(&shared), writers.clone());
        if !writers.is_empty() {
            thread::spawn(move || {
                while !shared_ping.ended.load(Ordering::SeqCst) {
                    for (_, w) in &writers_ping {
                        send(w, "ping");
                    }
                    thread::sleep(timing.ping);
                }
            });
        }
        Heartbeat {
            shared,
            conns: writers,
        }
    }

    /// The line naming the lost peer, once one is lost.
    pub fn lost(&self) -> Option<String> {
        let state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.clone()
    }

    /// Runs `hook` with the line naming the lost peer once one is lost (at once
    /// if one already is).
    pub fn on_lost(&self, hook: impl FnOnce(&str) + Send + 'static) {
        let lost = {
            let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.0.is_none() {
                state.1 = Some(Box::new(hook));
                return;
            }
            state.0.clone()
        };
        if let Some(line) = lost {
            hook(&line);
        }
    }

    /// A clean end: the peers hear `bye` and stop watching this rank.
    pub fn finish(self) {
        self.end("bye");
    }

    /// This rank failed with `line`: every other rank ends with it, naming this
    /// rank (rank 0 relays it).
    pub fn fail(self, line: &str) {
        let line = line.replace('\n', " ");
        self.end(&format!("fail {line}"));
    }

    /// Says `message` to every peer and closes this side for writing (the
    /// reader threads drain what the peers still send, so no reset is raised).
    fn end(self, message: &str) {
        self.shared.ended.store(true, Ordering::SeqCst);
        for (_, w) in &self.conns {
            send(w, message);
            let stream = w.lock().unwrap_or_else(|p| p.into_inner());
            let _ = stream.shutdown(Shutdown::Write);
        }
    }
}

/// A watch dropped without `finish` or `fail` is a rank gone: its connections
/// close, and its peers name it.
impl Drop for Heartbeat {
    fn drop(&mut self) {
        if self.shared.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        for (_, w) in &self.conns {
            let stream = w.lock().unwrap_or_else(|p| p.into_inner());
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn send(stream: &Mutex<TcpStream>, message: &str) {
    let mut stream = stream.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(stream, "{message}");
}

/// Reads `peer`'s messages until it ends or is lost. On rank 0 a loss is relayed
/// to every other rank.
fn watch(
    rank: usize,
    peer: usize,
    stream: TcpStream,
    shared: &Shared,
    writers: &[(usize, Arc<Mutex<TcpStream>>)],
    timing: Timing,
) {
    let mut lines = BufReader::new(stream).lines();
    let line = loop {
        let message = match lines.next() {
            None => {
                break format!(
                    "rank {peer} is lost: its connection to rank {rank} closed (its process ended)"
                );
            }
            Some(Err(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break format!(
                    "rank {peer} is lost: rank {rank} heard nothing from it for {}s (its host hung or the network dropped)",
                    timing.silence.as_secs_f64()
                );
            }
            Some(Err(e)) => {
                break format!("rank {peer} is lost: its connection to rank {rank} failed ({e})");
            }
            Some(Ok(m)) => m,
        };
        match message.split_once(' ').unwrap_or((&message, "")) {
            ("ping", _) => continue,
            ("bye", _) => return,
            ("fail", why) => break format!("rank {peer} failed: {why}"),
            ("down", why) => break why.to_string(),
            _ => continue,
        }
    };
    if shared.ended.load(Ordering::SeqCst) {
        return;
    }
    if rank == 0 {
        for (other, w) in writers {
            if *other != peer {
                send(w, &format!("down {line}"));
            }
        }
    }
    shared.lose(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_name_the_rank_whose_build_or_config_differs() {
        let ours = RunId::of(&Config::tiny());
        assert_eq!(ours.config.len(), 16);
        assert_eq!(ours.differs(3, &ours.clone()), None);
        let other_build = RunId {
            version: "9.9.9".into(),
            ..ours.clone()
        };
        assert_eq!(
            ours.differs(3, &other_build).unwrap(),
            format!(
                "rank 3 runs hgpt 9.9.9, rank 0 runs hgpt {}: every rank must run the same build",
                ours.version
            )
        );
        let seeded = Config::tiny().with_override("train.seed=7").unwrap();
        let other_config = RunId::of(&seeded);
        assert_ne!(other_config.config, ours.config);
        assert!(
            ours.differs(3, &other_config)
                .unwrap()
                .starts_with("rank 3's config differs")
        );
    }

    #[test]
    fn payloads_round_trip_through_hex_and_bad_hex_is_refused() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn a_hello_names_its_rank_world_and_run() {
        let run = RunId::of(&Config::tiny());
        let place = Place {
            rank: 2,
            world: 4,
            local_rank: 0,
        };
        assert_eq!(parse_hello(&hello(place, &run)), Some((2, 4, run)));
        assert_eq!(parse_hello("hgpt-rendezvous rank=x world=4"), None);
    }
}
