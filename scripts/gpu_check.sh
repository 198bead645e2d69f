#!/usr/bin/env bash
# The GPU check, as one prepared run (8 minutes at most on one GPU): install what is needed
# (from wheels brought along, if any), run every gpu-marked test, then write the GPU table.
#
#   bash scripts/gpu_check.sh OUT [--device cuda] [--wheels DIR]
#   bash scripts/gpu_check.sh /tmp/out --device cpu     # end to end on the CPU, small
#
# OUT gets: gpu_tests.log (pytest -m gpu), gpu_table.md and each bench run's log and report.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUT [--device cuda] [--wheels DIR]}
shift
device=cuda wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
py=${PYTHON:-python3}
if [ -d .venv ]; then py=.venv/bin/python; fi
if ! "$py" -c "import paragen" 2>/dev/null; then
  # no network on a lent machine: the wheels come along (pip download -d DIR .[dev] beforehand)
  if [ -n "$wheels" ]; then "$py" -m pip install -q --no-index --find-links "$wheels" -e ".[dev]"
  else "$py" -m pip install -q -e ".[dev]"; fi
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$out/device.txt"
start=$(date +%s)
timeout 240 "$py" -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tail -40 > "$out/gpu_tests.log" || true
tail -3 "$out/gpu_tests.log"
if [ "$device" = cpu ]; then
  args=(--limit 2 --max-new-tokens 16 --budget 120)
else
  args=(--limit 8 --max-new-tokens 64 --budget $((420 - ($(date +%s) - start))))
fi
timeout 450 "$py" scripts/gpu_table.py --device "$device" --out "$out" "${args[@]}"
echo "gpu_check: done in $(( $(date +%s) - start )) s; results in $out"
