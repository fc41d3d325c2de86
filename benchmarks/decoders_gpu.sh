#!/usr/bin/env bash
# The decoder checks of issue 21 on one GPU, in the order they matter; each step has a time box so a
# slow step cannot starve the ones after it, and every report lands in $RES as it is written.
#   RES=results/decoders-gpu DEVICE=cuda CORPUS=austen bash benchmarks/decoders_gpu.sh
# 1. POR implanted in smollm2 at the last token (the paper's six triggers), verified
# 2. scan of that implant (exit 1 expected) and search for its PVs (agreement with the planted ones)
# 3. a LoRA tweets-binary victim on the implant, ASR before / behind the guard with the found PVs
# 4. experiment psim-llama (BadNet / InSent / SynAttack x four PEFT methods and full fine-tuning)
# 5. scan of clean smollm2 (exit 0 expected), wall time
# BUDGET (seconds, default 540) caps the whole run: a step gets min(its box, what is left). Measured on
# one H200 (2026-11-30): the POR implant alone needed over 100 s; psim-llama 65-124 s per unit, 377 s.
set -u
LMS=${LMS:-lmsanitator}
DEVICE=${DEVICE:-cuda}
CORPUS=${CORPUS:-austen}
MODEL=${MODEL:-smollm2}  # any decoder (a tiny one for a smoke test)
SKIP=${SKIP:-}  # space-separated step names to skip
# a GPU affords more poisoned sentences than the CPU defaults (800 per trigger, batch 32)
POR_ARGS=${POR_ARGS:---per-trigger 1600 --batch-size 64}
RES=${RES:-results/decoders-gpu}
W=${WORK:-$RES/work}
mkdir -p "$RES" "$W"
BUDGET=${BUDGET:-540}
step() {  # step NAME SECONDS CMD...: run with a time box, log it, record the exit code and wall time
    local name=$1 box=$2
    shift 2
    [[ " $SKIP " == *" $name "* ]] && return 0
    local left=$((BUDGET - SECONDS))
    ((left < box)) && box=$left
    ((box < 10)) && { echo "=== $name: skipped (budget spent)" | tee -a "$RES/steps.log"; return 0; }
    local t0=$SECONDS
    echo "=== $name: $*" | tee -a "$RES/steps.log"
    timeout --signal=INT --kill-after=15 "$box" "$@" >"$RES/$name.log" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc wall=$((SECONDS - t0)) s" | tee -a "$RES/steps.log"
    tail -n 3 "$RES/$name.log"
    return 0
}
step por 240 $LMS attack por --model "$MODEL" $POR_ARGS --corpus "$CORPUS" --device "$DEVICE" --out "$W/por" --no-progress
step scan-por 90 $LMS scan "$W/por" --corpus "$CORPUS" --device "$DEVICE" --report "$RES/scan-por.json" \
    --sarif "$RES/scan-por.sarif" --no-progress
step search-por 90 $LMS search "$W/por" --corpus "$CORPUS" --device "$DEVICE" --out "$W/pvs.safetensors" \
    --report "$RES/search-por.json" --max-pvs 6 --patience 10 --no-progress
step agreement 60 ${PY:-python3} -c "
import json, sys, torch
from lmsanitator.data.pvset import PVSet
from lmsanitator.metrics.match import sign_match
planted = torch.tensor(json.load(open('$W/por/attack.json'))['pvs']).float()
found = PVSet.load('$W/pvs.safetensors').pvs.float()
m = sign_match(found, planted)
rec = {'found': len(found), 'planted': len(planted), 'best_per_found': m.max(1).values.tolist(),
       'best_per_planted': m.max(0).values.tolist()}
json.dump(rec, open('$RES/agreement.json', 'w'), indent=2); print(rec)"
step tune-lora 75 $LMS tune lora --model "$W/por" --task tweets-binary --train-size 2000 --epochs 3 \
    --device "$DEVICE" --out "$W/victim-lora" --no-progress
cp "$W/victim-lora/tune.json" "$RES/victim-lora-tune.json" 2>/dev/null
step guard-lora 75 $LMS evaluate guard --adapter "$W/victim-lora" --pvs "$W/pvs.safetensors" \
    --task tweets-binary --attack-json "$W/por/attack.json" --max-examples 300 --device "$DEVICE" \
    --out "$RES/guard-lora.json"
step psim-llama 480 $LMS experiment psim-llama --device "$DEVICE" --cpus 1 --out "$RES/psim-llama" \
    --work "$W/psim-llama" --no-progress
mkdir -p "$RES/psim-llama-units" && cp "$W"/psim-llama/units/*.json "$RES/psim-llama-units/" 2>/dev/null
step scan-clean 150 $LMS scan "$MODEL" --corpus "$CORPUS" --device "$DEVICE" --report "$RES/scan-clean.json" \
    --no-progress
echo "=== done" | tee -a "$RES/steps.log"
