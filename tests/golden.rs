//! Recorded CPU training: a fixed seed's 20 steps (losses, gradient norms, validation
//! losses and the final parameters' SHA-256) for a tied harmonic and an untied softmax
//! model, recorded before the architecture redesign. Any change that moves a CPU
//! result by one bit fails here; a deliberate numeric change re-records the values
//! (and says why in its commit).

mod common;

use std::path::Path;

use sha2::{Digest, Sha256};

use common::succeeds;

const HARMONIC_TRAIN_LOSS: [f64; 20] = [
    5.537478566169739,
    5.534345760941505,
    5.4404913783073425,
    5.358580216765404,
    5.264785438776016,
    5.153361469507217,
    5.036583572626114,
    4.914958596229553,
    4.824934929609299,
    4.677521795034409,
    4.592024713754654,
    4.51938533782959,
    4.410185396671295,
    4.3503700494766235,
    4.310712426900864,
    4.20441073179245,
    4.161025241017342,
    4.153775796294212,
    4.101022318005562,
    4.103131145238876,
];
const HARMONIC_GRAD_NORM: [f64; 20] = [
    2.317853771828491,
    2.246127457871114,
    2.1567586009161177,
    1.552904869675903,
    1.3251321776943272,
    1.3697300249444073,
    1.4033365155320046,
    1.4321740917850645,
    1.3514806446379743,
    1.3865600243080205,
    1.279503336452806,
    1.2806830112181908,
    1.294248639092768,
    1.3801851033614358,
    1.2697640841861022,
    1.2796162086812335,
    1.34824413314803,
    1.2531872537566788,
    1.3165697256323414,
    1.3737601021909684,
];
const HARMONIC_VAL_LOSS: [f64; 2] = [4.549016043543816, 4.085661798715591];
const HARMONIC_PARAMS_SHA256: &str =
    "90741b2d7ebeb4ef9999933d52872ae31a01ca5e2682710b35267365819b4b34";
const SOFTMAX_TRAIN_LOSS: [f64; 20] = [
    5.566794866696,
    5.531552445143461,
    5.456625465303659,
    5.385935923084617,
    5.293231250718236,
    5.182568261399865,
    5.063355686143041,
    4.954632397741079,
    4.850793136283755,
    4.709873566403985,
    4.628816232085228,
    4.544819122180343,
    4.437394451349974,
    4.381881708279252,
    4.341410727240145,
    4.229837176389992,
    4.176808532327414,
    4.196314629167318,
    4.133035903796554,
    4.12548747099936,
];
const SOFTMAX_GRAD_NORM: [f64; 20] = [
    2.087124876916846,
    2.0075966949019928,
    1.9684730890120992,
    1.6995554568451445,
    1.3111869119904918,
    1.3730724380685362,
    1.4038960498295006,
    1.4313809834547593,
    1.3437331459873143,
    1.3740987011604697,
    1.2708796300911511,
    1.26800263119063,
    1.2752842209922126,
    1.360926711625886,
    1.2531126107909092,
    1.2590220850626201,
    1.3193379014792708,
    1.2395186971412884,
    1.295252917334339,
    1.3466644369604848,
];
const SOFTMAX_VAL_LOSS: [f64; 2] = [4.596554873511195, 4.122986119240522];
const SOFTMAX_PARAMS_SHA256: &str =
    "fd504c763f573ce96c748b199fbbf14f108ec2dbbd106e6d0fa8f7bbc6a712b1";

/// `hgpt train` of the recorded run: 2 layers x 32 channels, 4 x 32 tokens with two
/// micro-batches a step, a 5-step warm-up, validation at steps 10 and 20.
fn train(head: &str, out: &Path) {
    let tied = if head == "harmonic" { "true" } else { "false" };
    let sets = [
        format!("model.head={head}"),
        format!("model.tie_embeddings={tied}"),
        "model.n_layer=2".into(),
        "model.n_head=2".into(),
        "model.n_embd=32".into(),
        "model.harmonic_exponent=32".into(),
        "model.block_size=32".into(),
        "train.seq_len=32".into(),
        "train.batch_size=4".into(),
        "train.grad_accum=2".into(),
        "train.warmup_steps=5".into(),
        "train.log_every=1".into(),
        "train.eval_every=10".into(),
        "train.eval_steps=2".into(),
        "train.checkpoint_every=0".into(),
        "data.builtin_train_bytes=20000".into(),
        "data.builtin_val_bytes=4000".into(),
    ];
    let mut args: Vec<String> = ["train", "--device", "cpu", "--steps", "20", "--out"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(out.display().to_string());
    args.extend(sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    succeeds(&args, out.parent().unwrap());
}

/// (train losses, gradient norms, validation losses) from a run's metrics.jsonl.
fn metrics(run: &Path) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let (mut train, mut norms, mut val) = (vec![], vec![], vec![]);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(x) = v.get("train_loss").and_then(|x| x.as_f64()) {
            train.push(x);
            norms.push(v["grad_norm"].as_f64().unwrap());
        }
        if let Some(x) = v.get("val_loss").and_then(|x| x.as_f64()) {
            val.push(x);
        }
    }
    (train, norms, val)
}

/// SHA-256 over the final checkpoint's tensors in name order (name, then raw bytes).
fn params_sha256(run: &Path) -> String {
    let file = run.join("checkpoints/step_00000020/model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = tensors.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut sha = Sha256::new();
    for name in &names {
        sha.update(name.as_bytes());
        sha.update(tensors.tensor(name).unwrap().data());
    }
    sha.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn check(head: &str, train_loss: &[f64], grad_norm: &[f64], val_loss: &[f64], sha: &str) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join(head);
    train(head, &run);
    let (t, g, v) = metrics(&run);
    assert_eq!(t, train_loss, "{head}: train losses moved");
    assert_eq!(g, grad_norm, "{head}: gradient norms moved");
    assert_eq!(v, val_loss, "{head}: validation losses moved");
    assert_eq!(params_sha256(&run), sha, "{head}: final parameters moved");
}

#[test]
fn harmonic_tied_cpu_training_is_bit_identical_to_the_recorded_run() {
    check(
        "harmonic",
        &HARMONIC_TRAIN_LOSS,
        &HARMONIC_GRAD_NORM,
        &HARMONIC_VAL_LOSS,
        HARMONIC_PARAMS_SHA256,
    );
}

#[test]
fn softmax_untied_cpu_training_is_bit_identical_to_the_recorded_run() {
    check(
        "softmax",
        &SOFTMAX_TRAIN_LOSS,
        &SOFTMAX_GRAD_NORM,
        &SOFTMAX_VAL_LOSS,
        SOFTMAX_PARAMS_SHA256,
    );
}
