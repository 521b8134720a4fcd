#!/usr/bin/env bash
# The paper's GPT-2 comparison (Baek et al. 2025, harmonic vs standard GPT-2) at CPU
# scale, on real English: the King James Bible (Debian package bible-kjv-text,
# ~4 MB), one document per chapter, a byte-level BPE trained on it.
#
#   tools/harmonic_vs_softmax.sh [OUT_DIR]        (default runs/harmonic-vs-softmax)
#
# Three heads on models of equal size, data and steps: softmax, harmonic with
# n = sqrt(C), harmonic with n = C; each trained at every learning rate of LRS, the
# one with the lowest final validation loss kept. For each kept model: validation
# loss, `hgpt probe analogy` over quadruples built from tools/kjv_pairs.txt (every
# ordered pair of two pairs of a category; quadruples with a word the tokenizer
# splits are skipped), `hgpt probe text` over a chapter range, `hgpt probe map` of
# some words. Writes OUT_DIR/results.md (the table), OUT_DIR/results.json, and per
# head loss.png, map.png and hist.png under OUT_DIR/<head>/.
#
# Environment: STEPS (600), LRS ("1e-3 3e-3 1e-2"), VOCAB (4096), HGPT (a built
# hgpt binary; default: cargo build --release). Installs bible-kjv-text with
# apt-get when the `bible` reader is missing (root needed). Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-runs/harmonic-vs-softmax}
STEPS=${STEPS:-600}
LRS=${LRS:-"1e-3 3e-3 1e-2"}
VOCAB=${VOCAB:-4096}
if [ -z "${HGPT:-}" ]; then
    cargo build --release --bin hgpt >&2
    HGPT=target/release/hgpt
fi
mkdir -p "$OUT"
start=$(date +%s)

# The corpus: verse numbers and chapter headings removed, verses one per line,
# chapters separated by <|endoftext|> lines.
if ! command -v bible >/dev/null; then
    apt-get update >&2 && apt-get install -y bible-kjv-text >&2
fi
if [ ! -s "$OUT/kjv.txt" ]; then
    bible "gen1:1-rev22:21" | awk '
        BEGIN { blank = 1; verse = ""; docs = 0 }
        /^[[:space:]]*$/ { blank = 1; next }
        blank && /^([1-3] )?[A-Z][A-Za-z ]* [0-9]+$/ {
            if (verse != "") { print verse; verse = "" }
            if (docs++ > 0) print "<|endoftext|>"
            blank = 0; next
        }
        /^ +[0-9]+ / { if (verse != "") print verse; sub(/^ +[0-9]+ /, ""); verse = $0; blank = 0; next }
        { verse = verse " " $0; blank = 0 }
        END { if (verse != "") print verse }' >"$OUT/kjv.txt"
fi
[ -f "$OUT/data/manifest.json" ] ||
    "$HGPT" prepare --input "$OUT/kjv.txt" --out "$OUT/data" --train-tokenizer "$VOCAB" --val-fraction 0.01
bible "john1:1-john3:36" | sed -E 's/^ +[0-9]+ //' >"$OUT/john1-3.txt"

# Quadruples a b c d from every ordered pair of distinct pairs (a, b), (c, d).
mkdir -p "$OUT/quads"
awk -v dir="$OUT/quads" '
    /^:/ { cat = $2; next }
    NF == 2 { n[cat]++; x[cat, n[cat]] = $1; y[cat, n[cat]] = $2; cats[cat] = 1 }
    END {
        for (c in cats)
            for (i = 1; i <= n[c]; i++)
                for (j = 1; j <= n[c]; j++)
                    if (i != j) print x[c, i], y[c, i], x[c, j], y[c, j] > (dir "/" c ".txt")
    }' tools/kjv_pairs.txt
cat "$OUT"/quads/{gender,singular-plural,present-past,antonym}.txt >"$OUT/quads/all.txt"

MODEL=(--set model.n_layer=4 --set model.n_head=4 --set model.n_embd=64 --set model.block_size=64
    --set model.vocab_size="$VOCAB" --set train.seq_len=64 --set train.batch_size=16
    --set train.warmup_steps=20 --set train.eval_every=100 --set train.eval_steps=12
    --set train.checkpoint_every=0 --set train.log_every=50 --set train.seed=1337)
declare -A HEAD=(
    [softmax]="model.head=softmax"
    [harmonic-sqrtC]="model.harmonic_exponent=sqrt"
    [harmonic-C]="model.harmonic_exponent=64"
)
HEADS=(softmax harmonic-sqrtC harmonic-C)

final_val() { jq -r 'select(.val_loss != null) | .val_loss' "$1/metrics.jsonl" | tail -1; }

for head in "${HEADS[@]}"; do
    for lr in $LRS; do
        run="$OUT/runs/$head-lr$lr"
        [ -f "$run/checkpoints/latest" ] && continue
        min_lr=$(awk -v l="$lr" 'BEGIN { print l / 10 }')
        echo "== $head lr $lr" >&2
        "$HGPT" train --data "$OUT/data" --steps "$STEPS" --out "$run" --device cpu "${MODEL[@]}" \
            --set model.head=harmonic --set "${HEAD[$head]}" --set train.lr="$lr" --set train.min_lr="$min_lr" \
            2>&1 | grep -E '^(done|step .*val)' >&2
    done
done

echo '[' >"$OUT/results.json"
sep=""
for head in "${HEADS[@]}"; do
    best="" best_val=""
    sweep=""
    for lr in $LRS; do
        v=$(final_val "$OUT/runs/$head-lr$lr")
        sweep="$sweep${sweep:+, }$lr: $(printf %.3f "$v")"
        if [ -z "$best" ] || awk -v a="$v" -v b="$best_val" 'BEGIN { exit !(a < b) }'; then
            best="$lr" best_val="$v"
        fi
    done
    run="$OUT/runs/$head-lr$best"
    dir="$OUT/$head"
    mkdir -p "$dir"
    cp "$run/loss.png" "$dir/loss.png"
    probe=("$HGPT" probe --checkpoint "$run" --json)
    for cat in all gender singular-plural present-past antonym; do
        "${probe[@]}" analogy --file "$OUT/quads/$cat.txt" | jq -c 'del(.scores, .words)' >"$dir/analogy-$cat.json"
    done
    "${probe[@]}" text "$OUT/john1-3.txt" --device cpu --png "$dir/hist.png" >"$dir/text.json"
    "${probe[@]}" map --pieces last --png "$dir/map.png" man woman king queen father mother son daughter \
        day night light darkness go went come came >/dev/null
    {
        echo "$sep"
        jq -n --arg head "$head" --arg lr "$best" --arg sweep "$sweep" --argjson val "$best_val" \
            --slurpfile all "$dir/analogy-all.json" --slurpfile text "$dir/text.json" \
            --slurpfile g "$dir/analogy-gender.json" --slurpfile sp "$dir/analogy-singular-plural.json" \
            --slurpfile pp "$dir/analogy-present-past.json" --slurpfile an "$dir/analogy-antonym.json" \
            '{head: $head, lr: $lr, sweep: $sweep, val_loss: $val, analogy: $all[0], text: $text[0],
              by_category: {gender: $g[0], "singular-plural": $sp[0], "present-past": $pp[0], antonym: $an[0]}}'
    } >>"$OUT/results.json"
    sep=","
done
echo ']' >>"$OUT/results.json"

wall=$(($(date +%s) - start))
{
    echo "| head | lr (sweep: final val loss) | val loss | analogy top-1 / top-5 | parallelogram loss, 2 PCs (median) | offset error (median) | top-1 by category: gender / plural / past / antonym | text: accuracy, mean p(true), median \|h - w_true\| / rms centre distance |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    jq -r '.[] | "| \(.head) | \(.lr) (\(.sweep)) | \(.val_loss * 1000 | round / 1000) | \(.analogy.top1 * 1000 | round / 1000) / \(.analogy.top5 * 1000 | round / 1000) (\(.analogy.quads) quads, \(.analogy.skipped) skipped) | \(.analogy.parallelogram_loss.median * 1000 | round / 1000) | \(.analogy.offset_error.median * 1000 | round / 1000) | \([.by_category[] | .top1 * 1000 | round / 1000] | map(tostring) | join(" / ")) | \(.text.accuracy * 1000 | round / 1000), \(.text.mean_p_target * 1000 | round / 1000), \(.text.dist_target.median / .text.rms_centre_distance * 1000 | round / 1000) |"' "$OUT/results.json"
    echo
    echo "steps $STEPS, vocab $VOCAB, 4 layers x 64 channels, batch 16 x 64 tokens; wall time ${wall}s"
} >"$OUT/results.md"
cat "$OUT/results.md"
