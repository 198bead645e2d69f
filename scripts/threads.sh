#!/usr/bin/env bash
# How many torch threads `paragen generate` / `paragen bench` should use: tokens per second
# of ar and lookahead on code-target at each thread count, interleaved, REPS times.
# Usage: scripts/threads.sh                    (THREADS="1 2 4", REPS, TOKENS, PARAGEN override)
# Prints one line per run: threads, strategy, tok/s (from `generate --stats`), and the load average.
set -e
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
REPS=${REPS:-3}
TOKENS=${TOKENS:-128}
PROMPT='def fibonacci(n):'
for rep in $(seq "$REPS"); do
  for t in $THREADS; do
    for s in ar lookahead; do
      line=$(${PARAGEN:-.venv/bin/paragen} generate "$PROMPT" --strategy $s --max-new-tokens "$TOKENS" --threads "$t" \
             --stats 2>&1 >/dev/null | grep 'tok/s')
      echo "threads=$t strategy=$s rep=$rep $(echo "$line" | grep -o '[0-9.]* tok/s') load=$(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
