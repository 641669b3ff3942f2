#!/usr/bin/env bash
# Issue 17's GPU work as one command on a lent GPU machine (docs/operations.md, "Where the models compute"):
#
#   TAILFORGE_COMMIT=<commit> bash benchmarks/gpu_session.sh OUT [SECONDS] [all|seeds|generator]
#
# all (default), within SECONDS (default 540) of its start:
#   1. benchmarks/gpu_check.py (CUDA against the CPU, throughput at 64/128/256 px), while the
#      128 px phantom part's data are ingested on the CPU (experiment --prepare --settings baseline);
#   2. the part's generators (experiment --prepare): the normal DiT and the label-conditioned one;
#   3. its seeds, one process each, all at once on the one GPU (a seed's small batches leave most of
#      it idle), each with --bootstrap 0 (the intervals are CPU work, done at the join);
#   4. OUT/session.tar.xz.* (split to come back in parts): each seed's saved run and log.
# seeds: step 3 again for the seeds without a saved run (a second call on the still-warm machine;
# every finished fine-tune and generated set is reused), then step 4.
# generator: benchmarks/gpu_check.py for at most GPU_CHECK_S seconds (default 200), then
# benchmarks/gpu_generator.py trains PRESET (default tiny) on the packed normals (.gpu-data, carried:
# make gpu-check-wheels gpu-data) for what is left less 150 s for its scoring; it writes OUT/gpu_generator.*
# and, where the new generator wins, OUT/normal_dit_128.{safetensors,md} (8 files in all with gpu_check's).
#
# Then, where the parts land: cat session.tar.xz.* | tar -xJ, and
#   python -m benchmarks.experiment --part phantom128 --join gpu-session/seed*/ --out benchmarks/results
# joins the seeds (refused unless they are one experiment) with one shared bootstrap.
#
# Env: PART (default phantom128; phantom256 is the same at 256 px, about 25 min of an H200 by the
# 128 px run's timings: more than one lease), TAILFORGE_HOME (default /tmp/tf), SEEDS (default "0 1 2 3 4"), PYTHON (default python3),
# EXPERIMENT_ARGS, GPU_CHECK_ARGS and GENERATOR_ARGS (extra arguments; a CPU smoke test passes small ones).
set -u
out=${1:?give the folder for the results}
budget=${2:-540}
stage=${3:-all}
started=$SECONDS
export TAILFORGE_HOME=${TAILFORGE_HOME:-/tmp/tf} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
part=${PART:-phantom128}
seeds=${SEEDS:-0 1 2 3 4}
runs=$TAILFORGE_HOME/gpu-session
threads=$(( $(nproc) / $(echo $seeds | wc -w) ))
mkdir -p "$out" "$runs"
left() { echo $(( budget - (SECONDS - started) )); }
say() { echo "[gpu_session $(( SECONDS - started )) s] $*"; }
experiment="$py -m benchmarks.experiment --part $part --bootstrap 0 ${EXPERIMENT_ARGS:-}"

if [ "$stage" = generator ]; then
  say "gpu_check for at most ${GPU_CHECK_S:-200} s"
  timeout "${GPU_CHECK_S:-200}" $py -m benchmarks.gpu_check --commit "${TAILFORGE_COMMIT:-unknown}" --out "$out" \
    ${GPU_CHECK_ARGS:-} 2>&1 | tee "$out/gpu_check.log"
  if [ "$(left)" -le 210 ]; then
    say "only $(left) s left: too little to train and score a generator"
    exit 1
  fi
  minutes=$(awk -v s="$(( $(left) - 150 ))" 'BEGIN {printf "%.2f", s / 60}')
  say "training the ${PRESET:-tiny} generator for $minutes min, then scoring it"
  timeout "$(( $(left) - 5 ))" $py -m benchmarks.gpu_generator train --data .gpu-data --out "$out" \
    --preset "${PRESET:-tiny}" --minutes "$minutes" --commit "${TAILFORGE_COMMIT:-unknown}" ${GENERATOR_ARGS:-}
  status=$?
  say "done (exit $status): $(ls "$out" | tr '\n' ' ')"
  exit $status
fi

if [ "$stage" = all ]; then
  say "ingesting the $part part's data on the CPU; gpu_check on the GPU"
  $experiment --prepare --settings baseline > "$runs/ingest.log" 2>&1 &
  ingest=$!
  timeout $(( $(left) / 2 )) $py -m benchmarks.gpu_check --commit "${TAILFORGE_COMMIT:-unknown}" --out "$out" \
    ${GPU_CHECK_ARGS:-} 2>&1 | tee "$out/gpu_check.log"
  wait $ingest || say "ingest failed: $(tail -3 "$runs/ingest.log")"
  say "training the generators"
  timeout "$(left)" $experiment --prepare > "$runs/prepare.log" 2>&1 || say "prepare failed: $(tail -5 "$runs/prepare.log")"
  tail -1 "$runs/prepare.log"
fi

say "seeds $seeds, $threads CPU threads each, until $budget s"
if command -v nvidia-smi > /dev/null; then  # how busy the one GPU is with every seed on it
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 > "$runs/gpu_use.csv" 2>&1 &
  watcher=$!
fi
pids=""
for seed in $seeds; do
  [ -f "$runs/seed$seed/experiment_$part.json" ] && continue
  OMP_NUM_THREADS=$threads timeout "$(( $(left) - 25 ))" $experiment --seeds "$seed" --out "$runs/seed$seed" \
    > "$runs/seed$seed.log" 2>&1 &
  pids="$pids $!"
done
[ -n "$pids" ] && wait $pids
[ -n "${watcher:-}" ] && kill "$watcher"
for seed in $seeds; do
  say "seed $seed: $(tail -1 "$runs/seed$seed.log" | cut -c1-200)"
done
rm -f "$out"/session.tar.xz.*
tar -C "$TAILFORGE_HOME" -cf - gpu-session | xz -T0 -2 | split -b 15M - "$out/session.tar.xz."
say "bundled: $(ls "$out" | tr '\n' ' ')"
