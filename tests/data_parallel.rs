//! Data-parallel training on the CPU: thread-ranks against one rank with the same
//! global batch, ZeRO-1 shards, resume across world sizes, failing ranks, and the
//! collectives' fixed reduction order.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Result, anyhow};

use hgpt::backend::Backend;
use hgpt::backend::cpu::CpuBackend;
use hgpt::checkpoint::Checkpoint;
use hgpt::dist::threads::{self, ThreadRank};
use hgpt::dist::{Collective, shards};
use hgpt::model::Gpt;
use hgpt::model::ParamLayout;
use hgpt::train::Trainer;
use hgpt::train::optim::Optimizer;
use hgpt::{data, memory};

use common::{TINY, hgpt, losses, strs, succeeds, train_args};

/// The loss tolerance between world sizes: reduction-order rounding only.
const REL: f64 = 1e-6;

/// `hgpt train` of TINY for `steps` steps on `ranks` CPU thread-ranks into `out`.
fn train(out: &Path, steps: usize, ranks: usize, extra: &[&str]) {
    let mut args = train_args(steps, &out.display().to_string(), extra);
    args.extend(["--device", "cpu", "--ranks"].map(String::from));
    args.push(ranks.to_string());
    succeeds(&strs(&args), out.parent().unwrap());
}

fn resume(run: &Path, steps: usize, ranks: usize, extra: &[&str]) {
    let mut args = vec![
        "train".to_string(),
        "--resume".into(),
        run.display().to_string(),
    ];
    args.extend([
        "--steps".into(),
        steps.to_string(),
        "--device".into(),
        "cpu".into(),
    ]);
    args.extend(["--ranks".into(), ranks.to_string()]);
    args.extend(
        extra
            .iter()
            .flat_map(|s| ["--set".to_string(), s.to_string()]),
    );
    succeeds(&strs(&args), run.parent().unwrap());
}

fn assert_close(got: &[(u64, f64)], want: &[(u64, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: steps logged");
    for ((s, a), (t, b)) in got.iter().zip(want) {
        assert_eq!(s, t, "{what}: steps");
        assert!(
            ((a - b) / b).abs() <= REL,
            "{what}: step {s} loss {a} vs {b} (relative {:e})",
            ((a - b) / b).abs()
        );
    }
}

fn head_sets(head: &str) -> Vec<String> {
    let tied = head == "harmonic";
    vec![
        format!("model.head={head}"),
        format!("model.tie_embeddings={tied}"),
    ]
}

#[test]
fn n_thread_ranks_train_like_one_rank_with_the_same_global_batch() {
    // (ranks, grad_accum per rank): 2 ranks also accumulate locally; 3 ranks split
    // the parameters unevenly.
    let params = ParamLayout::new(&common::config(TINY, &[]).model).total;
    assert_ne!(params % 3, 0, "the 3-rank run should have uneven shards");
    let dir = tempfile::tempdir().unwrap();
    for head in ["harmonic", "softmax"] {
        let sets = head_sets(head);
        for (ranks, accum) in [(2, 2), (3, 1), (4, 1)] {
            let with = |a: usize| {
                let mut s = sets.clone();
                s.push(format!("train.grad_accum={a}"));
                s
            };
            let one = dir.path().join(format!("{head}-1x{}", ranks * accum));
            if !one.exists() {
                train(&one, 20, 1, &strs(&with(ranks * accum)));
            }
            let many = dir.path().join(format!("{head}-{ranks}x{accum}"));
            train(&many, 20, ranks, &strs(&with(accum)));
            let (want, got) = (losses(&one), losses(&many));
            assert_eq!(want.len(), 20);
            assert_close(&got, &want, &format!("{head}, {ranks} ranks x {accum}"));
        }
    }
}

#[test]
fn every_parameter_element_is_owned_by_exactly_one_shard() {
    let tiny = ParamLayout::new(&common::config(TINY, &[]).model).total;
    for n in [0, 1, 2, 5, 7, 64, 1001, tiny] {
        for world in 1..=5 {
            let s = shards(n, world);
            assert_eq!(s.len(), world);
            let mut owners = vec![0; n];
            for r in &s {
                r.clone().for_each(|i| owners[i] += 1);
            }
            assert!(owners.iter().all(|&o| o == 1), "{n} over {world}: {s:?}");
            let (lo, hi) = (
                s.iter().map(|r| r.len()).min(),
                s.iter().map(|r| r.len()).max(),
            );
            assert!(hi.unwrap() - lo.unwrap() <= 1, "{n} over {world}: {s:?}");
            assert!(
                s.windows(2).all(|w| w[0].end == w[1].start),
                "contiguous, in rank order"
            );
        }
    }
}

#[test]
fn sharded_adamw_updates_every_element_as_the_whole_update_does() {
    // Shards cut tensors (with and without weight decay) at uneven places; the
    // pieces together must make the single-rank update bit for bit.
    let config = common::config(TINY, &["train.weight_decay=0.1"]);
    let model = Gpt::new(CpuBackend::<f32>::new(), &config.model);
    model.init(3);
    let n = model.num_params();
    let grads: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
        .collect();
    model.backend.write(model.grads, &grads);
    let start = model.read_params();
    let mut whole = Optimizer::new(&model, 0..n);
    whole.update(&model, &config.train, 1e-2, 0.5);
    let want = model.read_params();
    for world in [2, 3, 7] {
        model.write_params(&start);
        for shard in shards(n, world) {
            Optimizer::new(&model, shard).update(&model, &config.train, 1e-2, 0.5);
        }
        assert_eq!(model.read_params(), want, "{world} shards");
    }
}

/// Copies the files of run directory `from` (and its checkpoints) to `to`.
fn copy_run(from: &Path, to: &Path) {
    for entry in walk(from) {
        let dst = to.join(entry.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&entry, dst).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        match e.file_type().unwrap().is_dir() {
            true => files.extend(walk(&e.path())),
            false => files.push(e.path()),
        }
    }
    files
}

/// The parameters and AdamW moments of a run's latest checkpoint.
fn final_state(run: &Path) -> (Vec<f32>, Vec<f32>) {
    let ckpt = Checkpoint::open_run(run).unwrap();
    assert_eq!(ckpt.state.step, 20);
    (ckpt.read_params().unwrap(), ckpt.read_moments().unwrap())
}

#[test]
fn a_checkpoint_saved_at_4_ranks_resumes_at_4_bit_for_bit_and_at_2_and_1_within_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    train(&straight, 20, 4, &[]);
    let half = dir.path().join("half");
    train(&half, 10, 4, &[]);
    let want = losses(&straight);
    for (ranks, accum) in [(4, 1), (2, 2), (1, 4)] {
        let run = dir.path().join(format!("resumed-{ranks}"));
        copy_run(&half, &run);
        resume(&run, 20, ranks, &[&format!("train.grad_accum={accum}")]);
        let got = losses(&run);
        if ranks == 4 {
            assert_eq!(got, want, "resumed at the same world size");
            let same = final_state(&run) == final_state(&straight);
            assert!(
                same,
                "parameters or moments differ after resuming at 4 ranks"
            );
        } else {
            assert_close(&got, &want, &format!("resumed at {ranks} ranks"));
        }
    }
}

/// Runs `world` thread-ranks of `body` in a thread of its own, failing the test
/// if they do not all end within 20 s; returns the group's result and each rank's
/// own error text (rank order; None for a rank whose body succeeded).
fn group(world: usize, body: fn(&ThreadRank) -> Result<()>) -> (Result<()>, Vec<Option<String>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let errors = Mutex::new(vec![None; world]);
        let record = |rank: ThreadRank| {
            let r = body(&rank);
            if let Err(e) = &r {
                errors.lock().unwrap()[rank.place().rank] = Some(format!("{e:#}"));
            }
            r
        };
        let result = threads::run(world, record, record);
        tx.send((result, errors.into_inner().unwrap())).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the group ended within 20 s")
}

/// All-reduces a small buffer `rounds` times.
fn reduce_rounds(rank: &ThreadRank, rounds: usize) -> Result<()> {
    let be = CpuBackend::<f32>::new();
    let buf = be.alloc(4);
    for _ in 0..rounds {
        rank.all_reduce_sum(&be, buf)?;
    }
    Ok(())
}

#[test]
fn a_rank_that_fails_ends_the_others_with_its_error() {
    let (result, errors) = group(3, |rank| {
        reduce_rounds(rank, 2)?;
        match rank.place().rank {
            1 => Err(anyhow!("disk on fire")),
            _ => reduce_rounds(rank, 1000),
        }
    });
    let e = format!("{:#}", result.unwrap_err());
    assert_eq!(e, "rank 1 failed: disk on fire");
    for r in [0, 2] {
        assert_eq!(errors[r].as_deref(), Some(e.as_str()), "rank {r}");
    }
}

#[test]
fn a_rank_that_panics_ends_the_others_with_its_message() {
    let (result, errors) = group(3, |rank| {
        reduce_rounds(rank, 1)?;
        if rank.place().rank == 2 {
            panic!("index out of bounds");
        }
        reduce_rounds(rank, 1000)
    });
    let e = format!("{:#}", result.unwrap_err());
    assert_eq!(e, "rank 2 failed: panicked: index out of bounds");
    assert_eq!(errors[0].as_deref(), Some(e.as_str()));
    assert_eq!(errors[1].as_deref(), Some(e.as_str()));
}

#[test]
fn a_rank_that_ends_early_ends_the_others_waiting_for_it() {
    let (result, errors) = group(2, |rank| match rank.place().rank {
        0 => reduce_rounds(rank, 5),
        _ => reduce_rounds(rank, 2),
    });
    let e = format!("{:#}", result.unwrap_err());
    assert_eq!(
        e,
        "rank 0 failed: rank 1 ended while rank 0 waited for it in a collective"
    );
    assert_eq!(errors[1], None);
}

#[test]
fn thread_collectives_sum_in_rank_order_over_uneven_shards() {
    let (result, _) = group(3, |rank| {
        let r = rank.place().rank;
        let be = CpuBackend::<f32>::new();
        // Rank order makes (1e8 + 1) - 1e8 = 0 in f32; any other order gives 1 or 0.
        let term = [1e8f32, 1.0, -1e8][r];
        let buf = be.alloc(7);
        be.write(buf, &[term; 7]);
        rank.all_reduce_sum(&be, buf)?;
        assert_eq!(be.read(buf), vec![0.0; 7]);

        let s = shards(7, 3); // 3, 2, 2
        let own: Vec<f32> = (0..7).map(|i| (10 * r + i) as f32).collect();
        be.write(buf, &own);
        rank.reduce_scatter_sum(&be, buf, &s)?;
        let got = be.read(buf);
        for i in 0..7 {
            let want = if s[r].contains(&i) {
                (30 + 3 * i) as f32
            } else {
                own[i]
            };
            assert_eq!(got[i], want, "rank {r}, element {i}");
        }

        be.write(buf, &[r as f32; 7]);
        rank.all_gather(&be, buf, &s)?;
        assert_eq!(be.read(buf), vec![0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);

        be.write(buf, &[r as f32 + 5.0; 7]);
        rank.broadcast(&be, buf, 2)?;
        assert_eq!(be.read(buf), vec![7.0; 7]);

        let mut host = [r as f64, 1.0];
        rank.all_reduce_host(&mut host)?;
        assert_eq!(host, [3.0, 3.0]);
        rank.barrier()
    });
    result.unwrap();
}

#[test]
fn train_with_two_cpu_ranks_logs_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = train_args(2, "run", &["train.grad_accum=3"]);
    args.extend(["--device", "cpu", "--ranks", "2"].map(String::from));
    let out = hgpt(&strs(&args), dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "training 2 steps of 4 x 32 tokens x 3 micro-batches x 2 ranks: a global batch of 24 sequences (768 tokens)"
        ),
        "{stderr}"
    );
    assert_eq!(losses(&dir.path().join("run")).len(), 2);
}

#[test]
fn ranks_on_a_machine_without_a_gpu_or_zero_ranks_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    // On CUDA, --ranks starts one process per GPU; here none can open one.
    let mut args = train_args(2, "run", &[]);
    args.extend(["--device", "cuda", "--ranks", "2"].map(String::from));
    let e = common::fails(&strs(&args), dir.path());
    assert!(e.contains("rank 0 failed"), "{e}");
    let mut args = train_args(2, "run", &[]);
    args.extend(["--device", "cpu", "--ranks", "0"].map(String::from));
    let out = hgpt(&strs(&args), dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--ranks"),
        "{stderr}"
    );
    assert!(!dir.path().join("run").exists());
}

#[test]
fn a_thread_rank_allocates_exactly_the_plan_with_sharded_moments() {
    let config = common::config(common::SMALL, &["train.grad_accum=2"]);
    let world = 3;
    let (held, plan) = (Mutex::new(vec![0; world]), |gpus| {
        memory::plan(&config, config.train.batch_size, memory::Target::Cpu, gpus)
    });
    let body = |rank: ThreadRank| -> Result<()> {
        let r = rank.place().rank;
        let spec = data::DataSpec {
            rank: r,
            world,
            ..data::DataSpec::of(&config)
        };
        let data = data::load(&spec)?;
        let mut tr = Trainer::in_group(&config, CpuBackend::<f32>::new(), data, Box::new(rank))?;
        tr.train_step()?;
        tr.train_step()?;
        held.lock().unwrap()[r] = tr.model.backend.peak_memory_bytes();
        Ok(())
    };
    threads::run(world, body, body).unwrap();
    let (one, sharded) = (plan(1), plan(world));
    let want = sharded.total_bytes - sharded.head_chunk_bytes;
    let params = ParamLayout::new(&config.model).total;
    assert_eq!(
        one.total_bytes - sharded.total_bytes,
        8 * (params - params.div_ceil(world))
    );
    // Rank 0 holds the largest shard, as the plan assumes.
    assert_eq!(held.lock().unwrap()[0], want, "{sharded:#?}");
}

#[test]
fn nccl_is_loaded_at_run_time_and_its_absence_is_one_line_naming_it() {
    // SAFETY: the probe only dlopens and closes candidate file names.
    let present = unsafe { cudarc::nccl::sys::is_culib_present() };
    match hgpt::dist::nccl::unique_id() {
        Ok(id) => assert!(id.iter().any(|&b| b != 0), "an empty unique id"),
        Err(e) => {
            let line = format!("{e:#}");
            assert!(!present, "libnccl.so.2 loads, yet: {line}");
            assert!(!line.contains('\n'), "{line}");
            assert!(
                line.starts_with("libnccl.so.2 (NCCL) not found: "),
                "{line}"
            );
            assert!(
                line.contains("LD_LIBRARY_PATH") && line.contains("nvidia-nccl-cu13"),
                "{line}"
            );
        }
    }
}

#[test]
fn memory_with_gpus_shards_the_moments_per_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let plans = |gpus: &str| {
        let out = succeeds(&["memory", "--gpus", gpus, "--json"], dir.path());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["plans"][1].clone()
    };
    let moments = |plan: &serde_json::Value| {
        let items = plan["items"].as_array().unwrap();
        let m = items
            .iter()
            .find(|i| i["what"].as_str().unwrap().starts_with("AdamW"));
        m.unwrap()["bytes"].as_u64().unwrap()
    };
    let (one, three) = (plans("1"), plans("3"));
    let params = one["params"].as_u64().unwrap();
    assert_eq!(moments(&one), 8 * params);
    assert_eq!(moments(&three), 8 * params.div_ceil(3));
    assert_eq!(three["gpus"], 3);
    let saved = one["total_bytes"].as_u64().unwrap() - three["total_bytes"].as_u64().unwrap();
    assert_eq!(saved, 8 * params - 8 * params.div_ceil(3));
}
