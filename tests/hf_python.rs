//! tools/test_hf_export.py: hgpt's exports and prepared tokenizers checked with
//! transformers itself (the harmonic head through transformers' lm_head APIs,
//! the plain-GPT-2 refusal, AutoModel, AutoTokenizer, the dtype key, hf_check's
//! bound). It needs Python with torch and transformers (HGPT_PYTHON, default
//! python3); without them this test prints SKIPPED and checks nothing.

use std::process::Command;

#[test]
fn transformers_checks_pass_where_transformers_is_installed() {
    let python = std::env::var("HGPT_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import torch, transformers"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!(
            "SKIPPED: {python} cannot import torch and transformers; \
             the transformers checks did not run (set HGPT_PYTHON to a Python that can)"
        );
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(&python)
        .arg(format!("{root}/tools/test_hf_export.py"))
        .args(["--hgpt", env!("CARGO_BIN_EXE_hgpt")])
        .current_dir(root)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(
        out.status.success(),
        "tools/test_hf_export.py failed:\n{text}"
    );
    assert!(!text.contains("SKIPPED"), "{text}");
}
