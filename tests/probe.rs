//! `hgpt::probe` on planted geometry (exact parallelograms, points on a known
//! plane, hidden states at known distances), the word-to-token rule, and
//! `hgpt probe` end to end on a tiny trained checkpoint with its bad inputs.

mod common;

use common::{fails, strs, succeeds, train_args};
use hgpt::data::Tokenizer;
use hgpt::head::HeadKind;
use hgpt::probe::pca::Pca;
use hgpt::probe::{Geometry, Metric, Pieces, Quad, WordRule, distance, text};

const HARMONIC: HeadKind = HeadKind::Harmonic {
    exponent: 8.0,
    eps: 1e-12,
};

/// Rows of width `c` from small integer coordinates (exact in f32).
fn rows(points: &[&[f32]], c: usize) -> Vec<f32> {
    points
        .iter()
        .flat_map(|p| {
            let mut row = p.to_vec();
            row.resize(c, 0.0);
            row
        })
        .collect()
}

/// man, woman, king, queen, boy, girl as exact parallelograms (woman - man =
/// queen - king = girl - boy), plus distractors; width 6.
fn family(kind: HeadKind) -> Geometry {
    let centres = rows(
        &[
            &[1.0, 0.0, 0.0, 2.0],   // 0 man
            &[1.0, 3.0, 0.0, 2.0],   // 1 woman
            &[1.0, 0.0, 5.0, 2.0],   // 2 king
            &[1.0, 3.0, 5.0, 2.0],   // 3 queen
            &[4.0, 0.0, 1.0, 2.0],   // 4 boy
            &[4.0, 3.0, 1.0, 2.0],   // 5 girl
            &[-6.0, 1.0, -2.0, 7.0], // 6..: distractors
            &[3.0, -5.0, 2.0, -1.0, 4.0],
            &[0.0, 8.0, -3.0, 1.0, 0.0, 2.0],
            &[-2.0, -2.0, 9.0, 0.0, -4.0, 1.0],
        ],
        6,
    );
    Geometry::new(kind, centres, 6)
}

#[test]
fn exact_parallelograms_are_recovered_by_either_head() {
    let quads = [
        Quad {
            a: 0,
            b: 1,
            c: 2,
            d: 3,
        },
        Quad {
            a: 2,
            b: 3,
            c: 4,
            d: 5,
        },
        Quad {
            a: 0,
            b: 2,
            c: 1,
            d: 3,
        },
        Quad {
            a: 5,
            b: 4,
            c: 1,
            d: 0,
        },
    ];
    for kind in [HARMONIC, HeadKind::Softmax] {
        let geom = family(kind);
        for q in &quads {
            let best = geom.analogy(q.a, q.b, q.c, 3);
            assert_eq!(best[0].token, q.d, "{kind:?} {q:?}: {best:?}");
            let exact = match geom.metric() {
                Metric::Euclidean => 0.0,
                Metric::Cosine => 1.0,
            };
            assert!((best[0].value - exact).abs() < 1e-12, "{best:?}");
        }
        let report = geom.score_analogies(&quads, 2).unwrap();
        assert_eq!((report.top1, report.top5, report.quads), (1.0, 1.0, 4));
        for s in &report.scores {
            assert_eq!(s.rank, 1);
            assert!(s.parallelogram_loss < 1e-20, "{s:?}");
            assert_eq!(s.offset_error, 0.0);
        }
    }
}

#[test]
fn offset_error_is_the_miss_over_the_rms_distance_between_centres() {
    let geom = family(HARMONIC);
    // d = boy: b - a + c = queen, |queen - boy| measured against the brute-force
    // root-mean-square distance over all pairs of distinct centres.
    let q = Quad {
        a: 0,
        b: 1,
        c: 2,
        d: 4,
    };
    let mut sum_sq = 0.0;
    for i in 0..geom.v as u32 {
        for j in 0..geom.v as u32 {
            if i != j {
                sum_sq += distance(geom.centre(i), geom.centre(j)).powi(2);
            }
        }
    }
    let rms = (sum_sq / (geom.v * (geom.v - 1)) as f64).sqrt();
    assert!((geom.rms_centre_distance() - rms).abs() < 1e-12 * rms);
    let report = geom.score_analogies(&[q], 2).unwrap();
    let miss = distance(geom.centre(3), geom.centre(4));
    assert!((report.scores[0].offset_error - miss / rms).abs() < 1e-12);
    // queen itself is the closest to b - a + c, so boy ranks behind it.
    assert!(report.scores[0].rank >= 2);
    assert_eq!(report.top1, 0.0);
}

#[test]
fn parallelogram_loss_is_the_papers_on_a_plane() {
    // Centres on a plane of R^5: the top two components hold all the variance,
    // so the loss is |a + d - b - c|^2 over the mean squared distance from the mean.
    let (u, v) = ([0.5f32, 0.5, 0.5, 0.5, 0.0], [0.5f32, -0.5, 0.5, -0.5, 0.0]);
    let coords = [
        (0.0, 0.0),
        (3.0, 1.0),
        (1.0, 4.0),
        (5.0, 6.0),
        (-2.0, 2.0),
        (7.0, -3.0),
    ];
    let centres: Vec<f32> = coords
        .iter()
        .flat_map(|&(x, y)| (0..5).map(move |i| x * u[i] + y * v[i] + 1.0))
        .collect();
    let geom = Geometry::new(HARMONIC, centres, 5);
    let q = Quad {
        a: 0,
        b: 1,
        c: 2,
        d: 3,
    }; // off a parallelogram by (1, 1)
    let n = coords.len() as f64;
    let (mx, my) = (
        coords.iter().map(|c| c.0 as f64).sum::<f64>() / n,
        coords.iter().map(|c| c.1 as f64).sum::<f64>() / n,
    );
    let scale = coords
        .iter()
        .map(|&(x, y)| (x as f64 - mx).powi(2) + (y as f64 - my).powi(2))
        .sum::<f64>()
        / n;
    let expected = 2.0 / scale; // |(0,0) + (5,6) - (3,1) - (1,4)|^2 = |(1,1)|^2
    let loss = geom.score_analogies(&[q], 2).unwrap().scores[0].parallelogram_loss;
    assert!(
        (loss - expected).abs() < 1e-9 * expected,
        "{loss} vs {expected}"
    );
}

#[test]
fn neighbours_follow_each_heads_metric() {
    // From (1, 0): (1, 1) is nearest in distance, (10, 0) in direction.
    let centres = rows(
        &[
            &[1.0, 0.0],
            &[10.0, 0.0],
            &[1.0, 1.0],
            &[1.0, 3.0],
            &[-1.0, 0.0],
        ],
        2,
    );
    let harmonic = Geometry::new(HARMONIC, centres.clone(), 2);
    let ns = harmonic.neighbours(0, 4);
    let got: Vec<(u32, f64)> = ns.iter().map(|n| (n.token, n.value)).collect();
    assert_eq!(got, vec![(2, 1.0), (4, 2.0), (3, 3.0), (1, 9.0)]);
    let softmax = Geometry::new(HeadKind::Softmax, centres, 2);
    let ns = softmax.neighbours(0, 4);
    assert_eq!(
        ns.iter().map(|n| n.token).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(ns[0].value, 1.0);
    assert!((ns[1].value - 0.5f64.sqrt()).abs() < 1e-12);
    assert_eq!(ns[3].value, -1.0);
}

#[test]
fn pca_finds_the_axes_of_points_on_a_known_plane() {
    // Spread 3 along u and 1 along v (orthonormal in R^6), centred at m.
    let s = 0.5f32.sqrt();
    let u = [s, 0.0, s, 0.0, 0.0, 0.0];
    let v = [0.0, 0.6, 0.0, 0.0, -0.8, 0.0];
    let m = [1.0f32, -2.0, 0.5, 3.0, 0.0, 1.0];
    let mut points = Vec::new();
    for &(a, b) in &[(3.0f32, 1.0f32), (-3.0, 1.0), (3.0, -1.0), (-3.0, -1.0)] {
        points.extend((0..6).map(|i| m[i] + a * u[i] + b * v[i]));
    }
    let pca = Pca::fit(&points, 6, 2);
    assert!((pca.variances[0] - 9.0).abs() < 1e-5, "{:?}", pca.variances);
    assert!((pca.variances[1] - 1.0).abs() < 1e-5);
    assert!((pca.explained() - 1.0).abs() < 1e-6);
    let along = |axis: &[f64], w: &[f32]| {
        axis.iter()
            .zip(w)
            .map(|(x, &y)| x * y as f64)
            .sum::<f64>()
            .abs()
    };
    assert!((along(&pca.axes[0], &u) - 1.0).abs() < 1e-6);
    assert!((along(&pca.axes[1], &v) - 1.0).abs() < 1e-6);
    let p = pca.project(&points[..6]);
    assert!(
        (p[0].abs() - 3.0).abs() < 1e-5 && (p[1].abs() - 1.0).abs() < 1e-5,
        "{p:?} {pca:?}"
    );
}

#[test]
fn hidden_states_at_known_distances_are_measured_exactly() {
    let n = 8.0;
    let kind = HeadKind::Harmonic {
        exponent: n as f32,
        eps: 1e-12,
    };
    let centres = rows(&[&[0.0, 0.0, 0.0], &[4.0, 0.0, 0.0], &[0.0, 4.0, 0.0]], 3);
    let geom = Geometry::new(kind, centres, 3);
    // Hidden states 0.5 and 1 from centre 0, and 3 from centre 1 on the way to 0.
    let hidden = rows(&[&[0.5, 0.0, 0.0], &[0.0, 0.0, 1.0], &[1.0, 0.0, 0.0]], 3);
    let targets = [0u32, 0, 1];
    let ps = text::positions(&geom, &hidden, &targets);
    let dist = |p: &text::Position| (p.dist_target, p.dist_predicted, p.predicted);
    assert_eq!(dist(&ps[0]), (0.5, 0.5, 0));
    assert_eq!(dist(&ps[1]), (1.0, 1.0, 0));
    assert_eq!(dist(&ps[2]), (3.0, 1.0, 0));
    // p_i proportional to d_i^-n.
    let d = [1.0f64, 17f64.sqrt(), 17f64.sqrt()]; // second position
    let p0 = d[0].powf(-n) / d.iter().map(|x| x.powf(-n)).sum::<f64>();
    assert!(
        (ps[1].p_target - p0).abs() < 1e-5,
        "{} vs {p0}",
        ps[1].p_target
    );
    let report = text::report(&geom, &ps, 3);
    assert_eq!(
        report.histogram.iter().map(|b| b.count).collect::<Vec<_>>(),
        vec![2, 0, 1]
    );
    assert!((report.accuracy - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(report.dist_target.median, 1.0);
}

#[test]
fn words_become_one_token_by_the_stated_rule() {
    let tok = Tokenizer::bytes();
    let t = Some(&tok);
    let exact = |pieces| WordRule {
        pieces,
        exact: true,
    };
    assert_eq!(exact(Pieces::Reject).token("a", t, 257).unwrap(), 97);
    let split = exact(Pieces::Reject)
        .token("ab", t, 257)
        .unwrap_err()
        .to_string();
    assert!(split.contains("`ab` is 2 tokens"), "{split}");
    assert_eq!(exact(Pieces::First).token("ab", t, 257).unwrap(), 97);
    assert_eq!(exact(Pieces::Last).token("ab", t, 257).unwrap(), 98);
    // Inside running text a word follows a space: " a" is two bytes.
    let spaced = WordRule::default()
        .token("a", t, 257)
        .unwrap_err()
        .to_string();
    assert!(spaced.contains("2 tokens"), "{spaced}");
    assert_eq!(exact(Pieces::Reject).token("#256", None, 257).unwrap(), 256);
    let outside = exact(Pieces::Reject)
        .token("#300", t, 257)
        .unwrap_err()
        .to_string();
    assert!(
        outside.contains("outside the model's vocabulary (257 tokens)"),
        "{outside}"
    );
    let none = exact(Pieces::Reject)
        .token("a", None, 257)
        .unwrap_err()
        .to_string();
    assert!(none.contains("no tokenizer"), "{none}");
}

/// `base` then `rest`.
fn join<'a>(base: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    [base, rest].concat()
}

/// A tiny checkpoint of `head` trained a few steps in `dir/name`.
fn tiny_run(dir: &std::path::Path, name: &str, head: &str) -> String {
    let set = format!("model.head={head}");
    succeeds(&strs(&train_args(3, name, &[set.as_str()])), dir);
    name.to_string()
}

#[test]
fn probe_commands_round_trip_on_trained_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (head, ascending) in [("harmonic", true), ("softmax", false)] {
        let run = tiny_run(d, head, head);
        let base = ["probe", "--checkpoint", run.as_str(), "--exact", "--json"];

        let out = succeeds(&join(&base, &["neighbours", "e", "t", "-k", "7"]), d);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let words = v["words"].as_array().unwrap();
        assert_eq!(words.len(), 2);
        assert_eq!(words[0]["token"], 101);
        let values: Vec<f64> = words[0]["neighbours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["value"].as_f64().unwrap())
            .collect();
        assert_eq!(values.len(), 7);
        let ordered = values.windows(2).all(|w| {
            if ascending {
                w[0] <= w[1]
            } else {
                w[0] >= w[1]
            }
        });
        assert!(ordered, "{head}: {values:?}");

        let out = succeeds(&join(&base, &["analogy", "a", "b", "c"]), d);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let candidates = v["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 5);
        assert!(
            candidates
                .iter()
                .all(|c| ![97, 98, 99].contains(&c["token"].as_u64().unwrap()))
        );

        std::fs::write(
            d.join("quads.txt"),
            ": letters\na b c d\n\ne f g h\nx y zz w\n",
        )
        .unwrap();
        let out = succeeds(&join(&base, &["analogy", "--file", "quads.txt"]), d);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["quads"].as_u64(), v["skipped"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(v["scores"].as_array().unwrap().len(), 2);
        let top1 = v["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1) && v["top5"].as_f64().unwrap() >= top1);
        assert!(v["parallelogram_loss"]["mean"].as_f64().unwrap() > 0.0);

        let png = format!("{head}-map.png");
        succeeds(
            &join(
                &base,
                &["map", "a", "e", "i", "o", "u", "--png", png.as_str()],
            ),
            d,
        );
        assert!(std::fs::metadata(d.join(&png)).unwrap().len() > 1000);

        let text = "the cat sat on the mat. the dog sat on the log.\n".repeat(3);
        std::fs::write(d.join("text.txt"), &text).unwrap();
        let hist = format!("{head}-hist.png");
        let out = succeeds(
            &join(
                &base,
                &[
                    "text",
                    "text.txt",
                    "--device",
                    "cpu",
                    "--png",
                    hist.as_str(),
                ],
            ),
            d,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["positions"].as_u64(), Some(text.len() as u64)); // after EOT, every byte
        let binned: u64 = v["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(binned, text.len() as u64);
        let out = succeeds(
            &join(
                &base,
                &["text", "text.txt", "--device", "cpu", "--positions"],
            ),
            d,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rows = v["per_position"].as_array().unwrap();
        assert_eq!(rows.len(), text.len());
        // Targets are the text's bytes after the end-of-text token.
        assert_eq!(rows[0]["target"].as_u64(), Some(u64::from(b't')));
        assert_eq!(rows[4]["target"].as_u64(), Some(u64::from(b'c')));
        assert!(std::fs::metadata(d.join(&hist)).unwrap().len() > 1000);
    }
    // Text output for a person names the metric.
    let out = succeeds(
        &[
            "probe",
            "--checkpoint",
            "harmonic",
            "--exact",
            "neighbours",
            "e",
        ],
        d,
    );
    assert!(out.starts_with("Euclidean distance"), "{out}");
}

#[test]
fn probe_bad_inputs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = tiny_run(d, "run", "harmonic");
    std::fs::write(d.join("empty.txt"), "").unwrap();
    std::fs::write(d.join("bad.txt"), "a b c d\na b c\n").unwrap();
    std::fs::write(d.join("ok.txt"), "a b c d\n").unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["neighbours", "#999"],
            &["#999", "outside the model's vocabulary"],
        ),
        (
            &["--exact", "neighbours", "ab"],
            &["`ab` is 2 tokens", "--pieces"],
        ),
        (&["neighbours", "a"], &["2 tokens"]), // " a" inside running text
        (
            &["analogy", "--file", "empty.txt"],
            &["empty.txt: no analogy quadruples"],
        ),
        (&["text", "empty.txt"], &["empty.txt: empty"]),
        (&["map", "--file", "empty.txt"], &["empty.txt: empty"]),
        (
            &["--exact", "analogy", "--file", "bad.txt"],
            &["bad.txt:2", "four words"],
        ),
        (
            &[
                "--exact",
                "analogy",
                "--file",
                "ok.txt",
                "--components",
                "0",
            ],
            &["--components 0"],
        ),
        (
            &[
                "--exact",
                "analogy",
                "--file",
                "ok.txt",
                "--components",
                "33",
            ],
            &["(32)"],
        ),
        (&["--exact", "map", "a"], &["at least 2 words"]),
    ];
    for (args, expected) in cases {
        let e = fails(&join(&["probe", "--checkpoint", run.as_str()], args), d);
        assert!(expected.iter().all(|x| e.contains(x)), "{args:?}: {e}");
    }
    let e = fails(&["probe", "--checkpoint", "nowhere", "neighbours", "a"], d);
    assert!(e.contains("nowhere: no such checkpoint"), "{e}");
}

/// A checkpoint whose tied embedding holds an exact parallelogram a : b :: c : d
/// (bytes 97..=100) among small pseudo-random centres, with the byte tokenizer.
fn planted_checkpoint(dir: &std::path::Path, head: &str) {
    use hgpt::config::Config;
    let set = format!("model.head={head}");
    let overrides: Vec<String> = common::TINY
        .iter()
        .map(|s| s.to_string())
        .chain([set])
        .collect();
    let config = Config::load_or(None, Config::tiny(), &overrides).unwrap();
    let layout = hgpt::model::ParamLayout::new(&config.model);
    let mut params = vec![0f32; layout.total];
    let c = config.model.n_embd;
    let mut state = 12345u32;
    for x in &mut params[..config.model.vocab_size * c] {
        state = state.wrapping_mul(1664525).wrapping_add(1013904223);
        *x = (state >> 8) as f32 / (1u32 << 24) as f32 * 0.2 - 0.1;
    }
    let (p, g, r) = ([1.0f32, -2.0, 0.5], [3.0f32, 0.0, 1.0], [0.0f32, 4.0, -2.0]);
    for (token, (dg, dr)) in [
        (97, (0.0, 0.0)),
        (98, (1.0, 0.0)),
        (99, (0.0, 1.0)),
        (100, (1.0, 1.0)),
    ] {
        let row = &mut params[token * c..(token + 1) * c];
        row.fill(0.0);
        for i in 0..3 {
            row[i] = p[i] + dg * g[i] + dr * r[i];
        }
    }
    hgpt::checkpoint::save_model(dir, &config, &params, &Tokenizer::bytes()).unwrap();
}

#[test]
fn a_planted_parallelogram_in_a_checkpoint_is_recovered_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("quad.txt"), "a b c d\nb a d c\n").unwrap();
    for (head, exact) in [("harmonic", 0.0), ("softmax", 1.0)] {
        planted_checkpoint(&d.join(head), head);
        let base = ["probe", "--checkpoint", head, "--exact", "--json"];
        let out = succeeds(&join(&base, &["analogy", "a", "b", "c", "-k", "2"]), d);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["candidates"][0]["token"], 100, "{head}: {v}");
        assert_eq!(
            v["candidates"][0]["value"].as_f64(),
            Some(exact),
            "{head}: {v}"
        );
        let out = succeeds(&join(&base, &["analogy", "--file", "quad.txt"]), d);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["top1"].as_f64(), v["quads"].as_u64()),
            (Some(1.0), Some(2))
        );
        assert!(
            v["parallelogram_loss"]["mean"].as_f64().unwrap() < 1e-20,
            "{v}"
        );
        assert_eq!(v["offset_error"]["mean"].as_f64(), Some(0.0));
    }
}
