//! `hgpt train --ranks N` on CUDA: starts N processes of this binary on this node,
//! rank r with torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `MASTER_ADDR=127.0.0.1`, `MASTER_PORT` a free port) and only GPU r visible
//! (the r-th entry of `CUDA_VISIBLE_DEVICES` when that is set). SIGINT and
//! SIGTERM are passed on to every rank (each rank has its own process group, so
//! a terminal's Ctrl-C reaches them once, through here). Rank 0's lines are
//! shown as they come, the others' prefixed with their rank. When a rank fails,
//! the others get SIGTERM, then SIGKILL after a grace period, and the run ends in
//! one line naming the rank and its error.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use signal_hook::consts::{SIGINT, SIGTERM};

/// How long the other ranks have to end after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// Runs this command as `n` ranks and waits for them. `out`, when given, is
/// passed to every rank as `--out` (so all name the same run directory).
pub fn spawn(n: usize, out: Option<&Path>, env: &HashMap<String, String>) -> Result<()> {
    let gpus: Vec<String> = match env.get("CUDA_VISIBLE_DEVICES") {
        Some(list) => {
            let gpus: Vec<String> = list.split(',').map(|g| g.trim().to_string()).collect();
            if gpus.len() < n || gpus.iter().any(String::is_empty) {
                bail!(
                    "--ranks {n}: CUDA_VISIBLE_DEVICES={list:?} names {} GPUs; each rank needs its own",
                    gpus.len()
                );
            }
            gpus
        }
        None => (0..n).map(|g| g.to_string()).collect(),
    };
    let exe = std::env::current_exe().context("cannot find the hgpt binary to start the ranks")?;
    let mut args = child_args(std::env::args_os().skip(1));
    if let Some(out) = out {
        args.push("--out".into());
        args.push(out.into());
    }
    let port = free_port()?;
    let signals = [SIGINT, SIGTERM].map(|s| (s, Arc::new(AtomicBool::new(false))));
    for (signal, flag) in &signals {
        signal_hook::flag::register(*signal, Arc::clone(flag))
            .context("cannot install a signal handler")?;
    }
    let errors: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; n]));
    let mut children: Vec<Option<Child>> = Vec::new();
    let mut pipes = Vec::new();
    for (rank, gpu) in gpus.iter().take(n).enumerate() {
        let spawned = Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("CUDA_VISIBLE_DEVICES", gpu)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                end_all(&mut children);
                bail!("cannot start rank {rank}: {e}");
            }
        };
        let stderr = child.stderr.take().expect("piped");
        let errors = Arc::clone(&errors);
        pipes.push(thread::spawn(move || relay(rank, stderr, &errors)));
        children.push(Some(child));
    }
    let mut failure: Option<(usize, ExitStatus)> = None;
    while children.iter().any(Option::is_some) {
        for (signal, flag) in &signals {
            if flag.swap(false, Ordering::SeqCst) {
                signal_all(&children, *signal);
            }
        }
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Some(status) = child.try_wait().context("cannot wait for a rank")? {
                *slot = None;
                if !status.success() && failure.is_none() {
                    failure = Some((rank, status));
                }
            }
        }
        if failure.is_some() {
            end_all(&mut children);
        }
        thread::sleep(Duration::from_millis(20));
    }
    for pipe in pipes {
        let _ = pipe.join();
    }
    let Some((rank, status)) = failure else {
        return Ok(());
    };
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner());
    match &errors[rank] {
        Some(line) => bail!("rank {rank} failed: {line}"),
        None => bail!("rank {rank} failed: {}", describe(status)),
    }
}

/// This command's arguments without `--ranks N`.
fn child_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if arg == "--ranks" {
            args.next();
        } else if !arg.to_string_lossy().starts_with("--ranks=") {
            out.push(arg);
        }
    }
    out
}

/// A port on the loopback address no one listens on now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free port for the ranks' rendezvous")?;
    Ok(listener.local_addr()?.port())
}

/// Passes rank `rank`'s stderr on (prefixed unless it is rank 0), keeping its
/// last `error:` line for the run's own.
fn relay(rank: usize, stderr: impl std::io::Read, errors: &Mutex<Vec<Option<String>>>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(error) = line.strip_prefix("error: ") {
            errors.lock().unwrap_or_else(|p| p.into_inner())[rank] = Some(error.to_string());
            continue;
        }
        let mut err = std::io::stderr().lock();
        let _ = if rank == 0 {
            writeln!(err, "{line}")
        } else {
            writeln!(err, "rank {rank}: {line}")
        };
    }
}

fn signal_all(children: &[Option<Child>], signal: i32) {
    for child in children.iter().flatten() {
        // SAFETY: kill(2) on a child of this process that has not been reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }
}

/// Ends the ranks still running: SIGTERM, then SIGKILL after [`GRACE`].
fn end_all(children: &mut [Option<Child>]) {
    signal_all(children, SIGTERM);
    let deadline = Instant::now() + GRACE;
    for child in children.iter_mut().flatten() {
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    children.iter_mut().for_each(|c| *c = None);
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_args_drop_the_ranks_option_in_both_spellings() {
        let args = |list: &[&str]| child_args(list.iter().map(OsString::from));
        assert_eq!(
            args(&["train", "--ranks", "4", "--device", "cuda"]),
            ["train", "--device", "cuda"]
        );
        assert_eq!(
            args(&["train", "--ranks=4", "--steps", "3"]),
            ["train", "--steps", "3"]
        );
    }
}
