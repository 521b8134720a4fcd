//! Helpers shared by the tests: running the built binary, small model
//! configurations that train in well under a second (as `--set` overrides for the
//! command line, and as a [`Config`] in process), and an independent f64 GPT-2
//! forward pass (`reference`).
#![allow(dead_code)] // each test crate uses its own subset

pub mod reference;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hgpt::config::Config;

/// The variables by which a launcher (torchrun, srun, mpirun) makes a process
/// one rank of a run.
pub const LAUNCHER_VARS: &[&str] = &[
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NODELIST",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
];

/// The built binary as a command, run as a lone process even where the tests
/// themselves run under a launcher (a Slurm job).
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hgpt"));
    for var in LAUNCHER_VARS {
        cmd.env_remove(var);
    }
    cmd
}

pub fn hgpt(args: &[&str], dir: &Path) -> Output {
    hgpt_env(args, dir, &[])
}

/// [`hgpt`] with environment variables set (e.g. HGPT_MEMORY_LIMIT).
pub fn hgpt_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    command()
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Runs hgpt expecting success; returns its stdout.
pub fn succeeds(args: &[&str], dir: &Path) -> String {
    let out = hgpt(args, dir);
    assert!(
        out.status.success(),
        "hgpt {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs hgpt expecting failure; returns its single stderr line.
pub fn fails(args: &[&str], dir: &Path) -> String {
    fails_env(args, dir, &[])
}

/// [`fails`] with environment variables set.
pub fn fails_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> String {
    let out = hgpt_env(args, dir, env);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code for {args:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line for {args:?}, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

/// Asserts that `line` refuses two steps of `each` bytes held at once (`held`
/// says how, e.g. "for 2 ranks on this host") under `HGPT_MEMORY_LIMIT=cap`,
/// naming them, their need and the cap.
pub fn assert_refuses_two_held(line: &str, held: &str, each: usize, cap: &str) {
    let gib = hgpt::memory::gib;
    let need = format!(
        "{held} (2 x {:.2} GiB) needs {:.2} GiB",
        gib(each),
        gib(2 * each)
    );
    assert!(
        line.contains("does not fit")
            && line.contains(&need)
            && line.contains(&format!("(HGPT_MEMORY_LIMIT={cap})")),
        "{need}: {line}"
    );
}

/// A directory `hgpt prepare` wrote, and what it said on stderr.
pub struct Prepared {
    pub dir: PathBuf,
    pub stderr: String,
}

impl Prepared {
    /// Its manifest.json.
    pub fn manifest(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.join("manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// Runs `hgpt prepare --input INPUT --out OUT` in `dir` with `extra` flags and
/// `env` variables, expecting success.
pub fn prepare_env(
    dir: &Path,
    input: &str,
    out: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Prepared {
    let args = [&["prepare", "--input", input, "--out", out][..], extra].concat();
    let output = hgpt_env(&args, dir, env);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "hgpt {args:?} failed: {stderr}");
    Prepared {
        dir: dir.join(out),
        stderr,
    }
}

/// Writes `text` to docs.txt in `dir` and prepares it into `dir/out` with `extra`
/// flags, expecting success.
pub fn prepare_corpus(dir: &Path, text: &str, out: &str, extra: &[&str]) -> Prepared {
    std::fs::write(dir.join("docs.txt"), text).unwrap();
    prepare_env(dir, "docs.txt", out, extra, &[])
}

/// `--set` overrides for a 1-layer, 32-channel model on a little built-in text,
/// logging every step, with a constant learning rate (so a run's losses do not
/// depend on max_steps).
pub const TINY: &[&str] = &[
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.harmonic_exponent=32", // n = n_embd, as configs/tiny.toml has it
    "model.block_size=32",
    "train.seq_len=32",
    "train.batch_size=4",
    "train.warmup_steps=0",
    "train.min_lr=3e-3",
    "train.log_every=1",
    "train.eval_every=0",
    "train.eval_steps=2",
    "train.checkpoint_every=0",
    "data.builtin_train_bytes=20000",
    "data.builtin_val_bytes=4000",
];

/// Overrides for a 2-layer, 32-channel model with 32-token sequences on a little
/// built-in text, the rest as configs/tiny.toml has it.
pub const SMALL: &[&str] = &[
    "model.n_layer=2",
    "model.n_embd=32",
    "model.n_head=2",
    "model.block_size=32",
    "train.seq_len=32",
    "train.batch_size=4",
    "data.builtin_train_bytes=20000",
    "data.builtin_val_bytes=5000",
];

/// Overrides (after [`TINY`]) for a model of a few million parameters, 512
/// channels wide, whose memory plans differ in the GiB a refusal prints.
pub const WIDE: &[&str] = &[
    "model.n_embd=512",
    "model.n_head=8",
    "model.n_layer=2",
    "model.harmonic_exponent=512",
];

/// The built-in tiny config with `base` then `extra` applied as `--set` would
/// apply them (later ones win); `base` is [`TINY`] or [`SMALL`].
pub fn config(base: &[&str], extra: &[&str]) -> Config {
    base.iter()
        .chain(extra)
        .fold(Config::tiny(), |c, s| c.with_override(s).unwrap())
}

/// `--set` arguments: TINY then `extra` (later ones win).
pub fn sets(extra: &[&str]) -> Vec<String> {
    TINY.iter()
        .chain(extra)
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect()
}

/// `hgpt train` arguments with TINY settings and `extra` overrides.
pub fn train_args(steps: usize, out: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "train".to_string(),
        "--steps".into(),
        steps.to_string(),
        "--out".into(),
        out.into(),
    ];
    args.extend(sets(extra));
    args
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Training loss at each step in a run's metrics.jsonl; where a step was logged
/// twice (a run killed after it and resumed before it), the later line wins.
pub fn losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut by_step = std::collections::BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(loss) = v.get("train_loss").and_then(|l| l.as_f64()) {
            by_step.insert(v["step"].as_u64().unwrap(), loss);
        }
    }
    by_step.into_iter().collect()
}

/// An RGB pixel.
pub type Rgb = (u8, u8, u8);

/// The pixels of an RGB PNG file, row by row from the top.
pub fn png_rows(path: &Path) -> Vec<Vec<Rgb>> {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let w = info.width as usize;
    buf[..info.buffer_size()]
        .chunks(3 * w)
        .map(|row| row.chunks(3).map(|p| (p[0], p[1], p[2])).collect())
        .collect()
}

/// How many pixels of `rows` are exactly `color`.
pub fn count_color(rows: &[Vec<Rgb>], color: Rgb) -> usize {
    rows.iter().flatten().filter(|&&p| p == color).count()
}

/// A rectangle of pixels, edges included: (left, top, right, bottom).
pub type PixelBox = (usize, usize, usize, usize);

/// The legends of a plot: black one-pixel outlines of rectangles at least 40 px
/// wide and 10 px high (an axis is one line, a glyph is smaller).
pub fn legend_boxes(rows: &[Vec<Rgb>]) -> Vec<PixelBox> {
    const BLACK: Rgb = (0, 0, 0);
    // Horizontal black runs of 40 px or more: (left, right) -> rows holding one.
    let mut runs: std::collections::BTreeMap<(usize, usize), Vec<usize>> = Default::default();
    for (y, row) in rows.iter().enumerate() {
        let mut x = 0;
        while x < row.len() {
            let start = x;
            while x < row.len() && row[x] == BLACK {
                x += 1;
            }
            if x - start >= 40 {
                runs.entry((start, x - 1)).or_default().push(y);
            }
            x += 1;
        }
    }
    let mut boxes = Vec::new();
    for ((left, right), ys) in runs {
        for pair in ys.windows(2) {
            let (top, bottom) = (pair[0], pair[1]);
            let side = |x: usize| (top..=bottom).all(|y| rows[y][x] == BLACK);
            if bottom - top >= 10 && side(left) && side(right) {
                boxes.push((left, top, right, bottom));
            }
        }
    }
    boxes
}

/// Asserts that the plot has `expected` legends, and that in the band of rows
/// each spans (from 10 px above it) no pixel outside it has a trace's colour.
pub fn assert_legends_cover_no_trace(rows: &[Vec<Rgb>], expected: usize, traces: &[Rgb]) {
    let boxes = legend_boxes(rows);
    assert_eq!(boxes.len(), expected, "legends found: {boxes:?}");
    for &(left, top, right, bottom) in &boxes {
        let strip = top.saturating_sub(10);
        for (y, row) in rows.iter().enumerate().take(bottom + 1).skip(strip) {
            for (x, p) in row.iter().enumerate() {
                let inside = (left..=right).contains(&x) && (top..=bottom).contains(&y);
                assert!(
                    inside || !traces.contains(p),
                    "a trace ({p:?}) at ({x}, {y}) in the strip of the legend at {:?}",
                    (left, top, right, bottom)
                );
            }
        }
    }
}
