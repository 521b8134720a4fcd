//! Fuzzing the checkpoint reader with random corruption (proptest): flipped bytes
//! and truncation anywhere in model.safetensors, optimizer.safetensors,
//! state.json and tokenizer.json. The reader must never panic, and a corrupted safetensors file must
//! either be refused or load exactly what was saved (a flip in header padding
//! changes nothing).

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;

use hgpt::backend::Backend;
use hgpt::backend::cpu::CpuBackend;
use hgpt::checkpoint::{self, Checkpoint};
use hgpt::config::Config;
use hgpt::data;
use hgpt::train::Trainer;

const FILES: [&str; 4] = [
    "model.safetensors",
    "optimizer.safetensors",
    "state.json",
    "tokenizer.json",
];

/// One pristine checkpoint (written once), with its file contents and the values
/// it holds.
struct Pristine {
    _dir: tempfile::TempDir,
    step: std::path::PathBuf,
    files: Vec<Vec<u8>>,
    params: Vec<f32>,
    moments: (Vec<f32>, Vec<f32>),
}

fn pristine() -> &'static Pristine {
    static P: OnceLock<Pristine> = OnceLock::new();
    P.get_or_init(|| {
        let config = [
            "model.n_layer=1",
            "model.n_head=2",
            "model.n_embd=16",
            "model.block_size=16",
            "train.seq_len=16",
            "train.batch_size=2",
            "data.builtin_train_bytes=4000",
            "data.builtin_val_bytes=2000",
        ]
        .iter()
        .fold(Config::tiny(), |c, s| c.with_override(s).unwrap());
        let data = data::builtin(&data::DataSpec::of(&config)).unwrap();
        let mut tr = Trainer::new(&config, CpuBackend::<f32>::new(), data).unwrap();
        tr.train_step().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let step = checkpoint::save(dir.path(), &tr.snapshot()).unwrap();
        let files = FILES
            .iter()
            .map(|f| std::fs::read(step.join(f)).unwrap())
            .collect();
        let be = &tr.model.backend;
        Pristine {
            params: tr.model.read_params(),
            moments: (be.read(tr.optimizer.m), be.read(tr.optimizer.v)),
            _dir: dir,
            step,
            files,
        }
    })
}

/// Parameters, first moments, second moments.
type Loaded = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Loads everything; Ok with the values, or the error line.
fn load(step: &Path) -> Result<Loaded, String> {
    let run = || -> anyhow::Result<_> {
        let ckpt = Checkpoint::open(step)?;
        checkpoint::tokenizer::load(&ckpt)?;
        let params = ckpt.read_params()?;
        let moments = ckpt.read_moments()?;
        let (m, v) = moments.split_at(params.len());
        Ok((params, m.to_vec(), v.to_vec()))
    };
    run().map_err(|e| format!("{e:#}"))
}

#[derive(Clone, Debug)]
enum Corruption {
    /// XOR these bytes at these positions (as fractions of the file length).
    Flips(Vec<(f64, u8)>),
    /// Keep this fraction of the file.
    Truncate(f64),
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        prop::collection::vec((0.0..1.0f64, 1..=255u8), 1..4).prop_map(Corruption::Flips),
        (0.0..1.0f64).prop_map(Corruption::Truncate),
    ]
}

fn corrupt(bytes: &[u8], c: &Corruption) -> Vec<u8> {
    let at = |f: f64| ((f * bytes.len() as f64) as usize).min(bytes.len() - 1);
    match c {
        Corruption::Flips(flips) => {
            let mut out = bytes.to_vec();
            for &(f, x) in flips {
                out[at(f)] ^= x;
            }
            out
        }
        Corruption::Truncate(f) => bytes[..at(*f)].to_vec(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_checkpoints_are_refused_with_a_line_or_load_intact(
        file in 0..FILES.len(),
        c in corruption(),
    ) {
        let p = pristine();
        let work = tempfile::tempdir().unwrap();
        let step = work.path().join("step_00000001");
        std::fs::create_dir(&step).unwrap();
        for (name, bytes) in FILES.iter().zip(&p.files) {
            std::fs::write(step.join(name), bytes).unwrap();
        }
        std::fs::write(step.join(FILES[file]), corrupt(&p.files[file], &c)).unwrap();
        // A panic inside `load` fails the case: the property is that none happens.
        match load(&step) {
            Err(line) => {
                prop_assert!(!line.contains('\n'), "one line: {line}");
                prop_assert!(line.contains(FILES[file]) || line.contains("step_00000001"), "names the file: {line}");
            }
            // state.json has no checksum: a flipped digit in, say, the loader
            // position loads. The tensor files load only intact.
            Ok((params, m, v)) if FILES[file] != "state.json" => {
                prop_assert!(params == p.params && m == p.moments.0 && v == p.moments.1);
            }
            Ok(_) => {}
        }
    }
}

#[test]
fn pristine_checkpoint_loads() {
    let p = pristine();
    let (params, m, v) = load(&p.step).unwrap();
    assert_eq!(
        (params, m, v),
        (p.params.clone(), p.moments.0.clone(), p.moments.1.clone())
    );
}
