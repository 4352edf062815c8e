#!/usr/bin/env bash
# The prepared GPU check of issue 25, item 6: run as it is, from the repository root, on a
# machine with a CUDA GPU and the project venv installed (activated, or at ./.venv):
#
#     bash scripts/gpu_check.sh [RESULTS_DIR]
#
# RESULTS_DIR defaults to $OUT when set, else ./gpu-check-results. Steps, each limited
# with `timeout` so that the whole stays under 8 minutes (480 s):
#
#   1. python -m pytest -q tests/test_cuda.py
#   2. aensae bench train --device cuda --stack --graph --models N, N in 1 8 32 128
#      (paper size: n 256, m 1024, batch 256, aen; JSON beside each log)
#   3. the paper grid's ETA line: `aensae reproduce --config paper --device cuda` into a
#      temporary --out, stopped as soon as a line starting with "ETA:" appears
#   4. a short LLM harvest on CUDA (smollm2-135m, layer 3, 20,000 tokens) into a temporary
#      folder; the model must be reachable (hub or local Hugging Face cache)
#
# Everything printed goes to the terminal and to RESULTS_DIR (one log per step, plus
# summary.txt). A failing step does not stop the others; the end lists the failed steps
# and the exit status is 1 if any failed. No visible CUDA device: one line, exit 2.
set -u

RES="${1:-${OUT:-./gpu-check-results}}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"  # whole script, under 8 minutes with margin

if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
    PATH="$PWD/.venv/bin:$PATH"
fi
PY="${PYTHON:-python}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); nothing run" >&2
    exit 2
fi

mkdir -p "$RES" || { echo "gpu_check: cannot create results folder $RES" >&2; exit 2; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
SUMMARY="$RES/summary.txt"
: > "$SUMMARY"
FAILED=()

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S CMD...: run CMD under timeout (capped by what is left of the budget),
# output to the terminal and RES/NAME.log; record failures.
step() {
    local name="$1" limit="$2" left rc t0
    shift 2
    left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt 10 ]; then
        say "== $name: SKIPPED (time budget spent)"
        FAILED+=("$name(skipped)")
        return
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    say "== $name (limit ${limit}s): $*"
    t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$RES/$name.log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then
        say "== $name: ok in $((SECONDS - t0)) s"
    else
        if [ "$rc" -eq 124 ]; then
            say "== $name: TIMED OUT after ${limit}s"
        else
            say "== $name: FAILED (exit $rc) after $((SECONDS - t0)) s"
        fi
        FAILED+=("$name")
    fi
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "dirty: $(git status --porcelain 2>/dev/null | wc -l) changed paths"
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"|", torch.cuda.get_device_name(0), "| devices", torch.cuda.device_count())'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    echo "cpus: $(nproc)"
} 2>&1 | tee "$RES/machine.txt" | tee -a "$SUMMARY"

step test_cuda 100 "$PY" -m pytest -q tests/test_cuda.py

for N in 1 8 32 128; do
    case "$N" in 1 | 8) lim=40 ;; 32) lim=50 ;; *) lim=80 ;; esac
    step "bench_train_models$N" "$lim" aensae bench train --device cuda --stack --graph \
        --models "$N" --json "$RES/bench_train_models$N.json"
done

# The paper grid's ETA line: run the grid into a temporary folder, stop it once the line
# is out (it follows a short probe of the step rate). setsid: its own process group, so
# that the stop reaches any worker it started.
paper_eta() {
    local log="$RES/paper_eta.log" pid i
    : > "$log"
    setsid timeout --kill-after=5 "$1" aensae reproduce --config paper --device cuda \
        --out "$TMP/paper" --no-progress --no-figures > "$log" 2>&1 &
    pid=$!
    for ((i = 0; i < $1; i++)); do
        grep -q '^ETA:' "$log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    kill -TERM -- "-$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    if grep '^ETA:' "$log"; then
        return 0
    fi
    echo "no ETA line; the log ends with:"
    tail -n 20 "$log"
    return 1
}
left=$((BUDGET_S - SECONDS - 70))  # keep 70 s for the harvest
[ "$left" -gt 120 ] && left=120
if [ "$left" -ge 10 ]; then
    say "== paper_eta (limit ${left}s): aensae reproduce --config paper --device cuda (stopped at its ETA line)"
    t0=$SECONDS
    if paper_eta "$left" > "$RES/paper_eta.txt" 2>&1; then
        say "$(cat "$RES/paper_eta.txt")"
        say "== paper_eta: ok in $((SECONDS - t0)) s"
    else
        cat "$RES/paper_eta.txt"
        say "== paper_eta: FAILED after $((SECONDS - t0)) s (see paper_eta.log)"
        FAILED+=("paper_eta")
    fi
else
    say "== paper_eta: SKIPPED (time budget spent)"
    FAILED+=("paper_eta(skipped)")
fi

step llm_harvest 70 aensae llm harvest --model smollm2-135m --layer 3 --tokens 20000 \
    --device cuda --out "$TMP/cache" --no-progress

say "== total: $SECONDS s"
if [ "${#FAILED[@]}" -eq 0 ]; then
    say "gpu_check: all steps passed; results in $RES"
    exit 0
fi
say "gpu_check: FAILED steps: ${FAILED[*]}; results in $RES"
exit 1
