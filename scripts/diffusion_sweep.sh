#!/usr/bin/env bash
# Issue 28's table: diffusion and block_diffusion against ar (128 new tokens, 2 threads), new
# models at three thresholds of the left-to-right `prefix` rule and at `threshold` 0.9, old
# models at `threshold` 0.9 (their published setting), on HumanEval and stdlib
# prompts; then the infilling task. One bench run per setting (ar in the same run), merged per
# task into $OUT-<task>-sweep. Run it alone on a quiet machine.
# Usage: NEW_D=runs/code-diffusion2 NEW_B=runs/code-block-diffusion2 OLD_D=code-diffusion OLD_B=code-block-diffusion \
#          scripts/diffusion_sweep.sh          (OUT, LIMIT, HOLES (0: no infilling), TASKS, THRESHOLDS, INFILL_SOURCES override;
#          NEW_D=none: block models only, for comparing block runs)
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
TASKS=${TASKS:-humaneval stdlib}
run() {  # task, name, diffusion model, block model, rule, threshold
  local task=$1 name=$2 d=$3 b=$4 rule=$5 t=$6 strategies=ar,block_diffusion full=()
  [ "$d" = none ] || { strategies=ar,diffusion,block_diffusion; full=(--model-for diffusion=$d
    --option diffusion:rule=$rule --option diffusion:threshold=$t --option diffusion:cache=dual); }
  $PARAGEN bench --task $task --limit $LIMIT --max-new-tokens 128 --strategies $strategies "${full[@]}" \
    --model-for block_diffusion=$b --threads 2 --no-progress \
    --option block_diffusion:rule=$rule --option block_diffusion:threshold=$t \
    --out $OUT-$task-$name > $OUT-$task-$name.txt 2>&1 || echo "FAILED $task $name"
}
for task in $TASKS; do
  for t in ${THRESHOLDS:-0.9 0.7 0.5}; do run $task new-prefix${t#0.} $NEW_D $NEW_B prefix $t; done
  run $task new-thr9 $NEW_D $NEW_B threshold 0.9
  if [ -n "$OLD_D" ]; then run $task old-thr9 $OLD_D $OLD_B threshold 0.9; run $task old-prefix9 $OLD_D $OLD_B prefix 0.9; fi
  runs=($OUT-$task-new-*/); [ -n "$OLD_D" ] && runs+=($OUT-$task-old-*/)
  ${PYTHON:-.venv/bin/python} -m paragen.bench.merge "${runs[@]}" --out $OUT-$task-sweep || true
done
[ "$HOLES" = 0 ] && exit 0  # no infilling run
# The model's own length (end-of-text), and told the line count as ar is (lines=oracle).
FILLS="ar,diffusion[rule=prefix;threshold=0.9;cache=dual],diffusion[lines=oracle;rule=prefix;threshold=0.9;cache=dual],diffusion[threshold=0.9;cache=dual]"
for src in ${INFILL_SOURCES:-humaneval stdlib}; do
  $PARAGEN bench --task infill:$src --limit $HOLES --threads 2 --no-progress --model-for diffusion=$NEW_D \
    --strategies "$FILLS" --out $OUT-infill-$src-new > $OUT-infill-$src-new.txt 2>&1 || echo "FAILED infill $src new"
  if [ -n "$OLD_D" ]; then
    $PARAGEN bench --task infill:$src --limit $HOLES --threads 2 --no-progress --model-for diffusion=$OLD_D \
      --strategies "$FILLS" --out $OUT-infill-$src-old > $OUT-infill-$src-old.txt 2>&1 || echo "FAILED infill $src old"
  fi
done
