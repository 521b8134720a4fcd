#!/usr/bin/env bash
# Builds hgpt and the GPU test binaries (release) and copies them into .devbin/
# (gitignored), so tools/gpu_check.sh can run them on a GPU machine that has no Rust
# toolchain. Debug info is stripped but symbols are kept, so a panic's backtrace
# names its functions. .devbin/BUILD records the commit (and "+dirty" when the
# working tree differs from it). Usage: tools/build_devbin.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rm -rf .devbin
mkdir -p .devbin/tests
cargo build --release --bin hgpt
cp target/release/hgpt .devbin/hgpt
# cargo prints one JSON line per artifact; keep the executables of the cuda_* tests.
cargo test --release --no-run --message-format=json 2>/dev/null |
    grep '"executable":"[^"]*/cuda_[a-z_]*-[0-9a-f]*"' |
    sed 's/.*"executable":"\([^"]*\)".*/\1/' |
    while read -r exe; do
        name=$(basename "$exe" | sed 's/-[0-9a-f]*$//')
        cp "$exe" ".devbin/tests/$name"
    done
strip --strip-debug .devbin/hgpt .devbin/tests/*
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!.devbin' || echo +dirty)" >.devbin/BUILD
ls -l .devbin .devbin/tests
du -sh .devbin
