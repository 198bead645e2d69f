#!/usr/bin/env bash
# The draft-and-verify family on one draft, in one run per decoding mode, ar in the same run:
# chain (speculative), dynamic and static token trees, SpecTr (K-SEQ and recursive rejection).
# Settings of BENCHMARKS.md's token-tree section; tree@small was chosen on the stdlib task (tokens
# per call) and scripts/tree_cost.py (cost per call against tokens), not on HumanEval. Run on a quiet machine (no training or tests beside it).
# Usage: scripts/tree_bench.sh          (DRAFT, OUT, LIMIT, THREADS, BENCH_FLAGS override)
set -e
cd "$(dirname "$0")/.."
DRAFT=${DRAFT:-code-draft}
OUT=${OUT:-out/trees}
LIMIT=${LIMIT:-40}
THREADS=${THREADS:-2}
bench() {  # out-suffix, flags...
  local name=$1; shift
  ${PARAGEN:-.venv/bin/paragen} bench --task humaneval --limit $LIMIT --max-new-tokens 128 --draft $DRAFT \
    --threads $THREADS --no-progress --out $OUT-$name $BENCH_FLAGS "$@" > $OUT-$name.txt 2>&1 || echo "FAILED $name"
  cat $OUT-$name.txt
}
o() { echo --option $1; }
bench greedy --strategies ar,speculative,tree,tree@small,tree@static,spectr,spectr@rrs \
  $(o tree@small:budget=8) $(o tree@small:depth=4) $(o tree@small:topk=2) \
  $(o tree@static:shape=static) $(o spectr@rrs:verifier=rrs)
bench sampled --temperature 0.8 --top-p 0.95 \
  --strategies ar,speculative,tree,tree@small,tree@static,tree@static-without,spectr,spectr@rrs,spectr@rrs-without \
  $(o tree@small:budget=8) $(o tree@small:depth=4) $(o tree@small:topk=2) \
  $(o tree@static:shape=static) $(o tree@static-without:shape=static) $(o tree@static-without:draw=without) \
  $(o spectr@rrs:verifier=rrs) $(o spectr@rrs-without:verifier=rrs) $(o spectr@rrs-without:replacement=false)
