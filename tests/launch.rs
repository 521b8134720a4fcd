//! Launching a run on several ranks, with real processes on the loopback address:
//! `hgpt train --device cpu` under torchrun's, srun's or a file's rendezvous
//! meets its peers (checking that they run the same config, then saying to use
//! `--ranks N`, since the CPU backend's ranks are threads), refuses a rank with
//! another config by name, names the ranks that never arrive and a rank killed
//! during the meeting; `--ranks N` on CUDA ends every rank when one fails. The
//! heartbeat after the meeting is tested over real sockets between threads.
//! Every wait is bounded.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hgpt::config::Config;
use hgpt::dist::Place;
use hgpt::dist::rendezvous::{self, Heartbeat, Init, Joined, RunId, Timing};

use common::{TINY, command, sets};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `hgpt train --device cpu` with the tiny settings, `env` and `extra` arguments,
/// its stderr captured.
fn start(dir: &Path, env: &[(&str, String)], extra: &[&str]) -> Child {
    let mut cmd = command();
    cmd.args(["train", "--device", "cpu", "--steps", "1"])
        .args(sets(&[]))
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// torchrun's variables for rank `rank` of `world` meeting on `port`.
fn torchrun(rank: usize, world: usize, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", port.to_string()),
    ]
}

/// Waits (at most 60 s) for a process expected to fail; returns its one stderr
/// line and how long the wait took.
fn one_error_line(mut child: Child) -> (String, Duration) {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("hgpt did not end within 60 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let waited = t0.elapsed();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    let line = lines[0].strip_prefix("error: ").expect(&stderr).to_string();
    (line, waited)
}

fn met_line(rank: usize, world: usize, run: &Path, launcher: &str) -> String {
    let config = RunId::of(&common::config(TINY, &["train.max_steps=1"])).config;
    format!(
        "rank {rank} of {world} met its peers for run {} (config {config}), but the CPU backend runs a run's ranks as threads of one process: use `hgpt train --device cpu --ranks {world}` instead of {launcher}",
        run.display()
    )
}

#[test]
fn torchrun_ranks_meet_and_all_name_rank_0s_run() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let run0 = dir.path().join("run0");
    // Only rank 0's --out is the run's: the others learn it at the rendezvous.
    let children: Vec<Child> = (0..3)
        .map(|r| {
            let out = dir.path().join(format!("run{r}"));
            let out = out.to_str().unwrap();
            start(dir.path(), &torchrun(r, 3, port), &["--out", out])
        })
        .collect();
    for (r, child) in children.into_iter().enumerate() {
        let (line, _) = one_error_line(child);
        assert_eq!(line, met_line(r, 3, &run0, "torchrun"));
    }
    assert!(!run0.exists(), "a CPU rank under a launcher trains nothing");
}

#[test]
fn a_lone_cpu_rank_is_a_plain_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let child = start(
        dir.path(),
        &torchrun(0, 1, free_port()),
        &["--out", run.to_str().unwrap()],
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::losses(&run).len(), 1);
}

#[test]
fn slurm_ranks_meet_at_the_first_node_of_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let run0 = dir.path().join("run0");
    let children: Vec<Child> = (0..2)
        .map(|r| {
            let env = [
                ("SLURM_PROCID", r.to_string()),
                ("SLURM_NTASKS", "2".into()),
                ("SLURM_LOCALID", r.to_string()),
                ("SLURM_NODELIST", "localhost,gpu[02-03]".into()),
                ("MASTER_PORT", port.to_string()),
            ];
            start(dir.path(), &env, &["--out", run0.to_str().unwrap()])
        })
        .collect();
    for (r, child) in children.into_iter().enumerate() {
        assert_eq!(one_error_line(child).0, met_line(r, 2, &run0, "srun"));
    }
}

#[test]
fn file_rendezvous_ranks_meet_and_ignore_an_earlier_runs_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendezvous");
    // An earlier run's file, already at go: no rank may take its payload.
    std::fs::write(
        &file,
        "state=go world=2 version=0 config=0 nonce=1 payload=7374616c65\n",
    )
    .unwrap();
    let init = format!("file:{}", file.display());
    let run0 = dir.path().join("run0");
    // Rank 1 first: it waits for rank 0's file to replace the stale one.
    let env = |r: usize| {
        vec![
            ("RANK", r.to_string()),
            ("WORLD_SIZE", "2".to_string()),
            ("LOCAL_RANK", r.to_string()),
        ]
    };
    let args = ["--dist-init", &init, "--dist-timeout", "30"];
    let rank1 = start(dir.path(), &env(1), &args);
    thread::sleep(Duration::from_millis(300));
    let mut args0 = args.to_vec();
    args0.extend(["--out", run0.to_str().unwrap()]);
    let rank0 = start(dir.path(), &env(0), &args0);
    assert_eq!(one_error_line(rank0).0, met_line(0, 2, &run0, "torchrun"));
    assert_eq!(one_error_line(rank1).0, met_line(1, 2, &run0, "torchrun"));
    assert!(
        !dir.path().join("rendezvous.rank1").exists(),
        "answers are removed"
    );
}

#[test]
fn a_rank_with_another_config_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rank0 = start(dir.path(), &torchrun(0, 2, port), &["--dist-timeout", "20"]);
    let rank1 = start(
        dir.path(),
        &torchrun(1, 2, port),
        &["--dist-timeout", "20", "--set", "train.seed=7"],
    );
    for child in [rank0, rank1] {
        let (line, _) = one_error_line(child);
        assert!(
            line.starts_with("rank 1's config differs from rank 0's (config hash "),
            "{line}"
        );
    }
}

#[test]
fn ranks_that_never_arrive_are_named_when_the_wait_ends() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = ["--dist-timeout", "2"];
    let rank0 = start(dir.path(), &torchrun(0, 4, port), &args);
    let rank2 = start(dir.path(), &torchrun(2, 4, port), &args);
    let expected = "ranks 1, 3 of 4 did not arrive at the rendezvous within 2s";
    let (line, waited) = one_error_line(rank0);
    assert_eq!(line, expected);
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    // Rank 2 arrived, and hears why the run ended.
    assert_eq!(one_error_line(rank2).0, expected);
}

#[test]
fn a_rank_without_its_rank_0_says_whom_it_could_not_reach() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rank1 = start(dir.path(), &torchrun(1, 2, port), &["--dist-timeout", "1"]);
    let (line, _) = one_error_line(rank1);
    assert!(
        line.starts_with(&format!(
            "rank 1 could not reach rank 0 at 127.0.0.1:{port} within 1s"
        )),
        "{line}"
    );
}

/// Whether some process holds an established connection to `port` on this host
/// (Linux's /proc/net/tcp).
fn connected_to(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[2].ends_with(&port) && f[3] == "01"
    })
}

#[test]
fn a_rank_killed_during_the_rendezvous_is_named_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = ["--dist-timeout", "60"];
    let rank0 = start(dir.path(), &torchrun(0, 3, port), &args);
    let mut rank1 = start(dir.path(), &torchrun(1, 3, port), &args);
    let t0 = Instant::now();
    while !connected_to(port) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "rank 1 never connected"
        );
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300)); // its hello is read
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let (line, waited) = one_error_line(rank0);
    assert_eq!(
        line,
        "rank 1 left the rendezvous before it completed (its process ended)"
    );
    assert!(
        waited < Duration::from_secs(10),
        "{waited:?}, not the 60 s wait"
    );
}

/// Environment variables, as pairs.
type Env<'a> = &'a [(&'a str, &'a str)];

#[test]
fn launcher_and_rank_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(Env, &[&str], &str)] = &[
        (
            &[("RANK", "2"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")],
            &[],
            "error: RANK=2 is not below WORLD_SIZE=2",
        ),
        (
            &[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "2"),
                ("SLURM_LOCALID", "0"),
                ("SLURM_NODELIST", "gpu[3-1]"),
            ],
            &[],
            r#"error: SLURM_NODELIST="gpu[3-1]": [3-1]: the range 3-1 runs backwards"#,
        ),
        (
            &[
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "2"),
                ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ],
            &[],
            "error: rank 1 of 2 (mpirun): MASTER_ADDR is not set; export it as rank 0's host, or use --dist-init file:PATH",
        ),
        (
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")],
            &["--ranks", "2"],
            "error: --ranks 2 starts its own ranks, but torchrun already made this process rank 0 of 2: leave out --ranks under a launcher",
        ),
        (
            &[],
            &["--ranks", "0"],
            "error: --ranks 0: a run needs at least one rank",
        ),
        (
            &[("CUDA_VISIBLE_DEVICES", "3")],
            &["--device", "cuda", "--ranks", "2"],
            r#"error: --ranks 2: CUDA_VISIBLE_DEVICES="3" names 1 GPUs; each rank needs its own"#,
        ),
    ];
    for (env, args, expected) in cases {
        let mut cmd = command();
        cmd.arg("train").args(*args).current_dir(dir.path());
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), *expected);
    }
    for bad in [["--dist-init", "nfs:/x"], ["--dist-timeout", "0"]] {
        let out = command().arg("train").args(bad).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("'{}' for '{}", bad[1], bad[0])),
            "{stderr}"
        );
    }
}

#[test]
fn ranks_on_cuda_end_together_when_one_fails() {
    // Devices no CUDA driver has: every rank fails, on any machine; the run
    // ends in one line naming a rank, without waiting out the rendezvous.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut cmd = command();
    cmd.args([
        "train",
        "--device",
        "cuda",
        "--ranks",
        "2",
        "--dist-timeout",
        "60",
    ])
    .args(["--out", out.to_str().unwrap()])
    .args(sets(&[]))
    .env("CUDA_VISIBLE_DEVICES", "no-such-gpu-a,no-such-gpu-b")
    .current_dir(dir.path())
    .stderr(Stdio::piped());
    let (line, waited) = one_error_line(cmd.spawn().unwrap());
    assert!(
        line.starts_with("rank 0 failed: ") || line.starts_with("rank 1 failed: "),
        "{line}"
    );
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

// ---------------------------------------------------------------- the heartbeat

fn fast(silence_ms: u64) -> Timing {
    Timing {
        arrive: Duration::from_secs(20),
        ping: Duration::from_millis(50),
        silence: Duration::from_millis(silence_ms),
    }
}

/// `world` ranks meeting over loopback TCP as threads of this process; rank 0
/// brings `payload`.
fn meet(world: usize, payload: &[u8], timing: Timing) -> Vec<Joined> {
    let port = free_port();
    let run = RunId::of(&Config::tiny());
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let (run, payload) = (run.clone(), payload.to_vec());
            thread::spawn(move || {
                let place = Place {
                    rank,
                    world,
                    local_rank: rank,
                };
                let init = Init::Tcp {
                    host: "127.0.0.1".into(),
                    port,
                };
                let payload = (rank == 0).then_some(&payload[..]);
                rendezvous::join(place, &init, &run, payload, timing).unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// The line `hb` reports within 10 s.
fn lost_within(hb: &Heartbeat) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(line) = hb.lost() {
            return line;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no loss reported");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_rank_gets_rank_0s_payload() {
    let id: Vec<u8> = (0..128).map(|i| (i * 37 + 11) as u8).collect();
    for joined in meet(3, &id, fast(5000)) {
        assert_eq!(joined.payload, id);
        joined.heartbeat.finish();
    }
}

#[test]
fn a_rank_whose_connection_drops_is_named_by_every_other_rank() {
    let mut ranks = meet(3, b"id", fast(5000));
    let rank2 = ranks.pop().unwrap();
    drop(rank2.heartbeat); // as when its process dies
    let expected = "rank 2 is lost: its connection to rank 0 closed (its process ended)";
    assert_eq!(lost_within(&ranks[0].heartbeat), expected);
    assert_eq!(lost_within(&ranks[1].heartbeat), expected);
}

#[test]
fn a_failing_rank_ends_the_others_with_its_error() {
    let mut ranks = meet(3, b"id", fast(5000));
    let (tx, rx) = mpsc::channel();
    ranks[2]
        .heartbeat
        .on_lost(move |line| tx.send(line.to_string()).unwrap());
    let rank1 = ranks.remove(1);
    rank1.heartbeat.fail("CUDA out of memory\nat step 7");
    let expected = "rank 1 failed: CUDA out of memory at step 7";
    assert_eq!(lost_within(&ranks[0].heartbeat), expected);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), expected);
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the hook runs once"
    );
}

#[test]
fn a_silent_rank_is_lost_after_the_silence_limit() {
    let port = free_port();
    let run = RunId::of(&Config::tiny());
    let host = thread::spawn(move || {
        let place = Place {
            rank: 0,
            world: 2,
            local_rank: 0,
        };
        let init = Init::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        rendezvous::join(place, &init, &run, Some(b"id"), fast(400)).unwrap()
    });
    // Rank 1 by hand: says hello, reads go, then never pings (a hung host).
    let t0 = Instant::now();
    let mut peer = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    };
    let run = RunId::of(&Config::tiny());
    writeln!(
        peer,
        "hgpt-rendezvous rank=1 world=2 version={} config={}",
        run.version, run.config
    )
    .unwrap();
    let mut go = String::new();
    BufReader::new(peer.try_clone().unwrap())
        .read_line(&mut go)
        .unwrap();
    assert_eq!(go, format!("go {}\n", "6964"));
    let joined = host.join().unwrap();
    assert_eq!(
        lost_within(&joined.heartbeat),
        "rank 1 is lost: rank 0 heard nothing from it for 0.4s (its host hung or the network dropped)"
    );
    drop(peer);
}

#[test]
fn ranks_that_finish_are_not_lost() {
    let mut ranks = meet(3, b"id", fast(300));
    let rank0 = ranks.remove(0);
    for r in ranks {
        r.heartbeat.finish();
    }
    // Longer than the silence limit: pings stopped with the byes, not a loss.
    thread::sleep(Duration::from_millis(800));
    assert_eq!(rank0.heartbeat.lost(), None);
    rank0.heartbeat.finish();
}
