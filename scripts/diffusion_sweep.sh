#!/usr/bin/env bash
# Issue 28's table: diffusion and block_diffusion against ar on HumanEval and stdlib prompts
# (128 new tokens) at three thresholds, old and new models, and the infilling task. One
# bench run per setting (ar in the same run), merged per task into $OUT-<task>-sweep.
# Run it alone on a quiet machine (2 threads).
# Usage: scripts/diffusion_sweep.sh     (NEW_D, NEW_B, OLD_D, OLD_B, OUT, LIMIT, HOLES override)
set -e
cd "$(dirname "$0")/.."
PARAGEN=${PARAGEN:-.venv/bin/paragen}
NEW_D=${NEW_D:-code-diffusion}
NEW_B=${NEW_B:-code-block-diffusion}
OLD_D=${OLD_D:-}
OLD_B=${OLD_B:-}
OUT=${OUT:-out/diff}
LIMIT=${LIMIT:-40}
HOLES=${HOLES:-80}
run() {  # task, name, diffusion model, block model, threshold
  local task=$1 name=$2 d=$3 b=$4 t=$5
  $PARAGEN bench --task $task --limit $LIMIT --max-new-tokens 128 --strategies ar,diffusion,block_diffusion \
    --model-for diffusion=$d --model-for block_diffusion=$b --threads 2 --no-progress \
    --option diffusion:threshold=$t --option diffusion:cache=dual --option block_diffusion:threshold=$t \
    --out $OUT-$task-$name > $OUT-$task-$name.txt 2>&1 || echo "FAILED $task $name"
}
for task in humaneval stdlib; do
  for t in 0.9 0.7 0.5; do run $task new-thr${t#0.} $NEW_D $NEW_B $t; done
  if [ -n "$OLD_D" ]; then run $task old-thr9 $OLD_D $OLD_B 0.9; fi
  ${PYTHON:-.venv/bin/python} -m paragen.bench.merge $OUT-$task-*thr* --out $OUT-$task-sweep
done
$PARAGEN bench --task infill:humaneval --limit $HOLES --threads 2 --no-progress --model-for diffusion=$NEW_D \
  --strategies "ar,diffusion[threshold=0.9;cache=dual],diffusion[threshold=0.5;cache=dual],diffusion[length=oracle;threshold=0.9;cache=dual]" \
  --out $OUT-infill-new > $OUT-infill-new.txt 2>&1 || echo "FAILED infill new"
if [ -n "$OLD_D" ]; then
  $PARAGEN bench --task infill:humaneval --limit $HOLES --threads 2 --no-progress --model-for diffusion=$OLD_D \
    --strategies "ar,diffusion[threshold=0.9;cache=dual],diffusion[length=oracle;threshold=0.9;cache=dual]" \
    --out $OUT-infill-old > $OUT-infill-old.txt 2>&1 || echo "FAILED infill old"
fi
