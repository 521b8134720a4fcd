//! Every CUDA kernel compiles through NVRTC for sm_80 and sm_90 with no error and no
//! warning. Needs libnvrtc and the CUDA headers, not a GPU (.ci/run installs the pip
//! packages nvidia-cuda-nvrtc and nvidia-cuda-runtime). Without NVRTC the test says
//! so and passes, except under CI=true, where it fails so CI cannot skip silently.
//!
//! Also, without NVRTC: every kernel signature parses, and the kernels the backend
//! launches by name are exactly the kernels cuda/ defines.

use std::collections::BTreeSet;

use hgpt::backend::cuda::kernels::{self, FAMILIES};
use hgpt::backend::cuda::libs::{self, Lib};

fn nvrtc_usable() -> bool {
    let found = libs::require(Lib::Nvrtc).and_then(|()| libs::include_dir().map(|_| ()));
    match found {
        Ok(()) => true,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but the kernels cannot be compiled: {e:#}")
        }
        Err(e) => {
            skipped(&format!("SKIPPED: NVRTC compile check: {e:#}"));
            false
        }
    }
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_warnings() {
    if !nvrtc_usable() {
        return;
    }
    let mut failures = Vec::new();
    for family in FAMILIES {
        for arch in ["sm_80", "sm_90"] {
            match kernels::compile(family, arch) {
                Ok(c) if c.log.trim().is_empty() && !c.cubin.is_empty() => println!(
                    "ok: cuda/{}.cu for {arch}: {} kernels, {} bytes of CUBIN",
                    family.name,
                    family.signatures().map_or(0, |s| s.len()),
                    c.cubin.len()
                ),
                Ok(c) => failures.push(format!(
                    "cuda/{}.cu for {arch}: NVRTC warned:\n{}",
                    family.name,
                    c.log.trim()
                )),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn launched_kernels_are_exactly_the_defined_ones() {
    let mut defined = BTreeSet::new();
    for family in FAMILIES {
        let sigs = family.signatures().unwrap();
        assert!(
            !sigs.is_empty(),
            "cuda/{}.cu defines no kernel",
            family.name
        );
        for (name, _) in sigs {
            assert!(defined.insert(name), "kernel {name} defined twice");
        }
    }
    // The launcher files name kernels by string literal: every piece between two
    // quotes that is a snake_case word is a kernel name (taking every piece, not every
    // other, as a quote inside a comment would shift the count).
    let launchers = [
        include_str!("../src/backend/cuda/attention.rs"),
        include_str!("../src/backend/cuda/elementwise.rs"),
        include_str!("../src/backend/cuda/encoder.rs"),
        include_str!("../src/backend/cuda/head.rs"),
        include_str!("../src/backend/cuda/layernorm.rs"),
        include_str!("../src/backend/cuda/linear.rs"),
        include_str!("../src/backend/cuda/reduce.rs"),
        include_str!("../src/backend/cuda/shadow.rs"),
        include_str!("../src/backend/cuda/update.rs"),
    ];
    let launched: BTreeSet<&str> = launchers
        .iter()
        .flat_map(|src| src.split('"'))
        .filter(|s| s.contains('_') && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    assert_eq!(launched, defined, "launched vs defined kernels");
}

#[test]
fn compiled_kernels_are_cached_by_content() {
    if !nvrtc_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let family = &FAMILIES[0];
    let first = kernels::cubin_cached(dir.path(), family, "sm_90").unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one cached CUBIN");
    assert_eq!(std::fs::read(files[0].path()).unwrap(), first);
    // A second call reads the file rather than compiling: show it by changing it.
    std::fs::write(files[0].path(), b"marker").unwrap();
    let second = kernels::cubin_cached(dir.path(), family, "sm_90").unwrap();
    assert_eq!(second, b"marker");
    // Another architecture is another entry.
    kernels::cubin_cached(dir.path(), family, "sm_80").unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// Says why a test skipped, on stderr directly: the test harness captures println!
/// and eprintln!, and a skip must be visible in a plain `cargo test`.
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{why}");
}
