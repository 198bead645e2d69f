#!/usr/bin/env bash
# Quality against calls for a block-causal model: one bench run per setting, ar in the same run,
# merged into $OUT-sweep (table and report). Settings of BENCHMARKS.md's block diffusion section.
# Usage: scripts/block_diffusion_sweep.sh            (MODEL, OUT, LIMIT, BENCH_FLAGS override,
#        BENCH_FLAGS="--dtype bfloat16" scripts/block_diffusion_sweep.sh    e.g. this)
set -e
cd "$(dirname "$0")/.."
MODEL=${MODEL:-code-block-diffusion}
OUT=${OUT:-out/bd}
LIMIT=${LIMIT:-40}
run() {  # name, options...
  local name=$1; shift
  ${PARAGEN:-.venv/bin/paragen} bench --task humaneval --limit $LIMIT --max-new-tokens 128 --strategies block_diffusion \
    --model-for block_diffusion=$MODEL --threads 2 --no-progress --out $OUT-$name $BENCH_FLAGS "$@" > $OUT-$name.txt 2>&1 || echo "FAILED $name"
}
o() { echo --option block_diffusion:$1; }
run fixed8 $(o rule=fixed) $(o steps=8)
run fixed4 $(o rule=fixed) $(o steps=4)
run fixed2 $(o rule=fixed) $(o steps=2)
run thr09 $(o rule=threshold) $(o threshold=0.9)
run thr07 $(o rule=threshold) $(o threshold=0.7)
run thr05 $(o rule=threshold) $(o threshold=0.5)
run thr03 $(o rule=threshold) $(o threshold=0.3)
run factor1 $(o rule=factor) $(o factor=1.0)
${PYTHON:-.venv/bin/python} -m paragen.bench.merge $OUT-fixed8 $OUT-fixed4 $OUT-fixed2 $OUT-thr09 $OUT-thr07 $OUT-thr05 $OUT-thr03 $OUT-factor1 --out $OUT-sweep
