#!/usr/bin/env bash
# Prediction heads against ar, the draft model (speculative, tree) and lookup, in one run per
# decoding mode, on the built-in code-target with its built-in heads (loaded by default):
# blockwise at k = 2, 4, 8 (1, 3, 7 heads), its relaxed (lossy) modes, medusa (+ typical, lossy),
# hydra and eagle (EAGLE-2's dynamic tree; eagle@small a smaller tree for a CPU's cost per call).
# Run on a quiet machine (no training or tests beside it).
# Usage: scripts/heads_bench.sh          (OUT, LIMIT, THREADS, BENCH_FLAGS override)
set -e
cd "$(dirname "$0")/.."
OUT=${OUT:-out/heads}
LIMIT=${LIMIT:-40}
THREADS=${THREADS:-2}
bench() {  # out-suffix, flags...
  local name=$1; shift
  ${PARAGEN:-.venv/bin/paragen} bench --task humaneval --limit $LIMIT --max-new-tokens 128 \
    --threads $THREADS --no-progress --out $OUT-$name $BENCH_FLAGS "$@" > $OUT-$name.txt 2>&1 || echo "FAILED $name"
  cat $OUT-$name.txt
}
o() { echo --option $1; }
bench greedy --strategies ar,speculative,tree,lookup,blockwise@k2,blockwise@k4,blockwise,blockwise_relaxed,blockwise_relaxed@distance,medusa,medusa_typical,hydra,eagle,eagle@small \
  $(o blockwise@k2:k=1) $(o blockwise@k4:k=3) $(o blockwise_relaxed@distance:accept=distance) \
  $(o eagle@small:budget=8) $(o eagle@small:depth=4) $(o eagle@small:topk=2)
bench sampled --temperature 0.8 --top-p 0.95 --strategies ar,speculative,medusa,hydra,eagle,eagle@small \
  $(o eagle@small:budget=8) $(o eagle@small:depth=4) $(o eagle@small:topk=2)
