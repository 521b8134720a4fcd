//! Checkpoints: `RUN/checkpoints/step_%08d/` holding
//!
//! - `model.safetensors`: the parameters under GPT-2 style names; the header's
//!   metadata carries the resolved config, so the file alone is a usable model;
//! - `optimizer.safetensors`: AdamW's moments in fp32, `m.<name>` and `v.<name>`;
//! - `state.json`: step, loader position, config, tokenizer hash, the data's
//!   identity (shard fingerprints), versions;
//! - a copy of the tokenizer.
//!
//! A checkpoint is written into `checkpoints/.tmp-step_%08d`, every file fsynced,
//! then renamed into place; only after that is `checkpoints/latest` (one line naming
//! the step directory) replaced, also atomically. So a crash at any moment leaves
//! `latest` naming a complete checkpoint, and a step directory exists only complete.
//! Old checkpoints are then pruned (see [`retention`]).
//!
//! This module knows a run only as a [`TrainingSnapshot`] (plain host data), not
//! the training loop: the trainer makes the snapshot and restores itself from a
//! [`Checkpoint`].

pub mod abandon;
pub mod atomic;
pub mod compat;
pub mod guard;
pub mod lock;
pub mod retention;
pub mod state;
pub mod tensors;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::backend::Backend;
use crate::config::{self, Config};
use crate::data::{DataIdentity, LoaderPosition, Tokenizer};
use crate::model::{Gpt, ParamLayout};
pub use state::{FORMAT_VERSION, TrainingState};
use tensors::{Slot, TensorFile};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
/// `RUN/config.toml`, the run's resolved config; with `checkpoints/` it marks a run
/// directory.
pub const RUN_CONFIG_FILE: &str = "config.toml";
/// The file in `RUN/checkpoints/` naming the newest complete checkpoint.
pub const LATEST_FILE: &str = "latest";
const TMP_PREFIX: &str = ".tmp-";

/// `RUN/checkpoints`.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

pub fn step_dir_name(step: usize) -> String {
    format!("step_{step:08}")
}

/// The run and step of a step directory `RUN/checkpoints/step_N` (what `--resume`
/// may name instead of `RUN --from-step N`); None for any other path.
pub fn run_and_step_of(path: &Path) -> Option<(PathBuf, usize)> {
    let step = parse_step_dir_name(path.file_name()?.to_str()?)?;
    let parent = path.parent()?;
    let run = match parent.parent() {
        Some(run) if !run.as_os_str().is_empty() => run,
        _ => Path::new("."),
    };
    (parent.file_name()? == "checkpoints").then(|| (run.to_path_buf(), step))
}

fn parse_step_dir_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step_")?;
    (digits.len() >= 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The committed step directories of a run, by step.
pub fn list(run: &Path) -> Result<BTreeMap<usize, PathBuf>> {
    let dir = checkpoints_dir(run);
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if let Some(step) = entry.file_name().to_str().and_then(parse_step_dir_name) {
            out.insert(step, entry.path());
        }
    }
    Ok(out)
}

/// The newest complete checkpoint of a run: the one `latest` names, or, when a
/// crash came before the first `latest` was written, the newest step directory
/// (a step directory only ever appears complete).
pub fn latest(run: &Path) -> Result<PathBuf> {
    let pointer = checkpoints_dir(run).join(LATEST_FILE);
    match std::fs::read_to_string(&pointer) {
        Ok(text) => {
            let name = text.trim();
            if parse_step_dir_name(name).is_none() {
                bail!(
                    "{}: `{name}` is not a step directory name",
                    pointer.display()
                );
            }
            let dir = checkpoints_dir(run).join(name);
            if !dir.is_dir() {
                bail!(
                    "{}: names {}, which does not exist",
                    pointer.display(),
                    dir.display()
                );
            }
            Ok(dir)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => list(run)?
            .pop_last()
            .map(|(_, dir)| dir)
            .ok_or_else(|| anyhow!(
                "{}: no committed checkpoint in this run (its first write was cut short); start it over with `hgpt train --out {}`",
                run.display(),
                run.display()
            )),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", pointer.display())),
    }
}

/// Parameter slots with their GPT-2 style names.
fn model_slots(layout: &ParamLayout) -> Vec<Slot> {
    layout
        .named()
        .into_iter()
        .map(|(name, shape, offset)| Slot {
            name,
            shape,
            offset,
        })
        .collect()
}

/// Moment slots: `m.<name>` over the first copy of the layout, `v.<name>` over the
/// second.
fn optimizer_slots(layout: &ParamLayout) -> Vec<Slot> {
    let params = model_slots(layout);
    let moment = |prefix: &str, base: usize| {
        params
            .iter()
            .map(move |s| Slot {
                name: format!("{prefix}.{}", s.name),
                shape: s.shape.clone(),
                offset: base + s.offset,
            })
            .collect::<Vec<_>>()
    };
    [moment("m", 0), moment("v", layout.total)].concat()
}

/// A training run's state as plain host data: everything a checkpoint holds.
pub struct TrainingSnapshot<'a> {
    /// The resolved config of the run.
    pub config: &'a Config,
    /// Optimizer steps completed.
    pub step: usize,
    /// AdamW updates applied (less than `step` when the divergence guard skipped some).
    pub adam_step: u64,
    /// The parameters, laid out as [`ParamLayout`] says.
    pub params: Vec<f32>,
    /// AdamW's moments, m then v, each laid out as `params`.
    pub moments: Vec<f32>,
    /// Where the training loader continues.
    pub loader: LoaderPosition,
    /// The data's tokenizer; None for shards that came without a tokenizer.json.
    pub tokenizer: Option<&'a Tokenizer>,
    /// The identity of prepared data; None for the built-in corpus.
    pub data: Option<&'a DataIdentity>,
}

/// Writes `snap` as checkpoint `step_%08d` of `run` and makes it the latest, then
/// prunes old ones. Returns the checkpoint directory.
pub fn save(run: &Path, snap: &TrainingSnapshot) -> Result<PathBuf> {
    let root = checkpoints_dir(run);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = step_dir_name(snap.step);
    let dir = root.join(&name);
    if latest(run).ok().as_deref() == Some(dir.as_path()) {
        return Ok(dir); // resumed here and took no step since: already on disk
    }
    remove_stale_temporaries(&root)?;
    let tmp = root.join(format!("{TMP_PREFIX}{name}"));
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;

    write_model_file(&tmp, snap.config, snap.step, &snap.params)?;
    let optimizer_meta = BTreeMap::from([
        ("step".to_string(), snap.step.to_string()),
        ("adam_step".to_string(), snap.adam_step.to_string()),
    ]);
    tensors::write(
        &tmp.join(OPTIMIZER_FILE),
        &optimizer_slots(&ParamLayout::new(&snap.config.model)),
        &snap.moments,
        optimizer_meta,
        FORMAT_VERSION,
    )?;
    let state = TrainingState {
        format_version: FORMAT_VERSION,
        hgpt_version: env!("CARGO_PKG_VERSION").to_string(),
        step: snap.step,
        adam_step: snap.adam_step,
        loader: snap.loader,
        tokenizer_hash: snap.tokenizer.map(|t| t.hash().to_string()),
        data: snap.data.cloned(),
        config: snap.config.clone(),
    };
    state.write(&tmp.join(STATE_FILE))?;
    if let Some(t) = snap.tokenizer {
        tokenizer::write(t, &tmp)?;
    }
    atomic::sync_dir(&tmp)?;

    // A directory of this step that `latest` does not name is left from a run that
    // died before committing it: this one replaces it.
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    atomic::rename_synced(&tmp, &dir)?;
    atomic::replace_file(&root.join(LATEST_FILE), format!("{name}\n").as_bytes())?;
    prune(run, snap.step, snap.config)?;
    Ok(dir)
}

/// model.safetensors in `dir`: the parameters, with the config and step in its
/// metadata.
fn write_model_file(dir: &Path, config: &Config, step: usize, params: &[f32]) -> Result<()> {
    let meta = BTreeMap::from([
        ("config".to_string(), config.to_toml()),
        ("step".to_string(), step.to_string()),
    ]);
    let layout = ParamLayout::new(&config.model);
    tensors::write(
        &dir.join(MODEL_FILE),
        &model_slots(&layout),
        params,
        meta,
        FORMAT_VERSION,
    )
}

/// Writes the checkpoint directory `dir` holding a model alone, at step 0:
/// model.safetensors, state.json and the tokenizer, but no optimizer state. This
/// is how models from elsewhere (`hgpt import`) become checkpoints: `eval`,
/// `generate` and `train --init` read them; there is no run to resume. Like a
/// training checkpoint, `dir` appears only complete.
pub fn save_model(
    dir: &Path,
    config: &Config,
    params: &[f32],
    tokenizer: &Tokenizer,
) -> Result<()> {
    if dir.exists() {
        bail!("{}: already exists; pick another --out", dir.display());
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: not a directory name", dir.display()))?;
    let parent = atomic::parent_dir(dir);
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!("{TMP_PREFIX}{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write_model_file(&tmp, config, 0, params)?;
    let state = TrainingState {
        format_version: FORMAT_VERSION,
        hgpt_version: env!("CARGO_PKG_VERSION").to_string(),
        step: 0,
        adam_step: 0,
        loader: LoaderPosition {
            epoch: 0,
            shard: 0,
            offset: 0,
        },
        tokenizer_hash: Some(tokenizer.hash().to_string()),
        data: None,
        config: config.clone(),
    };
    state.write(&tmp.join(STATE_FILE))?;
    tokenizer::write(tokenizer, &tmp)?;
    atomic::sync_dir(&tmp)?;
    atomic::rename_synced(&tmp, dir)
}

/// Removes what a write killed half-way left behind.
fn remove_stale_temporaries(root: &Path) -> Result<()> {
    for entry in
        std::fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))?
    {
        let path = entry?.path();
        let stale = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(TMP_PREFIX));
        if stale && path.is_dir() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Applies the retention policy to the checkpoints up to `step` (newer ones are
/// uncommitted leftovers, replaced when their step comes again).
fn prune(run: &Path, step: usize, config: &Config) -> Result<()> {
    let dirs = list(run)?;
    let steps: Vec<usize> = dirs.keys().copied().filter(|&s| s <= step).collect();
    let t = &config.train;
    for s in retention::steps_to_delete(&steps, t.keep_last, t.keep_every) {
        std::fs::remove_dir_all(&dirs[&s])
            .with_context(|| format!("cannot remove {}", dirs[&s].display()))?;
    }
    Ok(())
}

/// A checkpoint directory whose state.json has been read and checked.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainingState,
}

impl Checkpoint {
    /// Opens a step directory, or a run directory's latest checkpoint (also named by
    /// the run's `checkpoints/latest` pointer file).
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let run_of_pointer = path
            .file_name()
            .filter(|name| *name == LATEST_FILE && path.is_file())
            .and_then(|_| path.parent()?.parent());
        let dir = if path.join(STATE_FILE).exists() {
            path.to_path_buf()
        } else if let Some(run) = run_of_pointer {
            latest(run)?
        } else if checkpoints_dir(path).is_dir() {
            latest(path)?
        } else if path.exists() {
            bail!(
                "{}: neither a checkpoint directory (no {STATE_FILE}) nor a run directory (no checkpoints/)",
                path.display()
            );
        } else {
            bail!("{}: no such checkpoint or run directory", path.display());
        };
        let state = TrainingState::read(&dir.join(STATE_FILE))?;
        Ok(Checkpoint { dir, state })
    }

    /// The latest checkpoint of a run directory (what --resume continues).
    pub fn open_run(run: &Path) -> Result<Checkpoint> {
        check_run_dir(run)?;
        Checkpoint::open(&latest(run)?)
    }

    /// Checkpoint `step` of a run directory (what `--resume RUN --from-step N`
    /// continues); a step with no checkpoint is refused listing the kept ones.
    pub fn open_step(run: &Path, step: usize) -> Result<Checkpoint> {
        check_run_dir(run)?;
        let kept = list(run)?;
        match kept.get(&step) {
            Some(dir) => Checkpoint::open(dir),
            None => {
                let steps: Vec<String> = kept.keys().map(usize::to_string).collect();
                bail!(
                    "{}: no checkpoint at step {step}; the kept steps are {}",
                    run.display(),
                    match steps.is_empty() {
                        true => "none".to_string(),
                        false => steps.join(", "),
                    }
                )
            }
        }
    }

    /// The model, on `backend`, with the checkpoint's parameters.
    pub fn load_model<B: Backend>(&self, backend: B) -> Result<Gpt<B>> {
        let params = self.read_params()?;
        Ok(Gpt::with_params(backend, &self.state.config.model, &params))
    }

    /// The parameters, read and checked on the host: every problem with the file
    /// shows before a device is opened.
    pub fn read_params(&self) -> Result<Vec<f32>> {
        let file = TensorFile::open(&self.dir.join(MODEL_FILE), FORMAT_VERSION)?;
        let config = metadata_config(&file)?;
        if config.model != self.state.config.model {
            bail!(
                "{}: the model config in its metadata differs from {STATE_FILE}'s",
                file.path().display()
            );
        }
        self.check_step(&file)?;
        let layout = ParamLayout::new(&config.model);
        file.flat(&model_slots(&layout), layout.total)
    }

    /// AdamW's moments, m then v, read and checked on the host.
    pub fn read_moments(&self) -> Result<Vec<f32>> {
        let file = TensorFile::open(&self.dir.join(OPTIMIZER_FILE), FORMAT_VERSION)?;
        self.check_step(&file)?;
        let adam_step: u64 = parse_meta(&file, "adam_step")?;
        if adam_step != self.state.adam_step {
            bail!(
                "{}: adam_step {adam_step} differs from {STATE_FILE}'s {}",
                file.path().display(),
                self.state.adam_step
            );
        }
        let layout = ParamLayout::new(&self.state.config.model);
        file.flat(&optimizer_slots(&layout), 2 * layout.total)
    }

    fn check_step(&self, file: &TensorFile) -> Result<()> {
        let step: usize = parse_meta(file, "step")?;
        if step != self.state.step {
            bail!(
                "{}: step {step} differs from {STATE_FILE}'s {}",
                file.path().display(),
                self.state.step
            );
        }
        Ok(())
    }
}

/// Refuses a path that is not a run directory with checkpoints.
fn check_run_dir(run: &Path) -> Result<()> {
    if !checkpoints_dir(run).is_dir() {
        bail!(
            "{}: not a run directory with checkpoints (no checkpoints/ inside)",
            run.display()
        );
    }
    Ok(())
}

/// The config in a tensor file's metadata. hgpt wrote it from a valid config, so one
/// that does not parse or validate is damage (the checksum, which covers it, is
/// checked only once the config has given the tensors' layout): a format error,
/// not a config error for the user to fix.
fn metadata_config(file: &TensorFile) -> Result<Config> {
    let corrupted = |e: anyhow::Error| {
        anyhow!(
            "{}: corrupted metadata: its config does not read back ({e:#})",
            file.path().display()
        )
    };
    let config = config::parse(file.meta("config")?, "config").map_err(corrupted)?;
    config.validate().map_err(corrupted)?;
    Ok(config)
}

fn parse_meta<T: std::str::FromStr>(file: &TensorFile, key: &str) -> Result<T> {
    let raw = file.meta(key)?;
    raw.parse().map_err(|_| {
        anyhow!(
            "{}: metadata `{key}` = `{raw}` is not a number",
            file.path().display()
        )
    })
}

/// A model from a `model.safetensors` alone: its config comes from the metadata.
pub fn load_model_file<B: Backend>(path: &Path, backend: B) -> Result<(Config, Gpt<B>)> {
    let file = TensorFile::open(path, FORMAT_VERSION)?;
    let config = metadata_config(&file)?;
    let layout = ParamLayout::new(&config.model);
    let params = file.flat(&model_slots(&layout), layout.total)?;
    let model = Gpt::with_params(backend, &config.model, &params);
    Ok((config, model))
}
