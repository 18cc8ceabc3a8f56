#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): one command, everything under $OUT, a summary at the end.
#
#   benchmarks/gpu_check.sh [--dry-run] [--parts env,tests,attention,video,kernels,serving] [--budget SECONDS]
#
# Parts, in order, each under its own timeout (capped by what is left of --budget, default 420 s):
#   env        versions, device, nvidia-smi, imports                     -> env.json
#   tests      the gpu-marked tests (bf16 kernels vs the reference)     -> tests.xml
#   attention  SLA vs flash SDPA: paper, Wan and streaming shapes        -> attention.json
#   video      Wan2.1-1.3B-shaped model, 512x512, 1-4 steps, dense/SLA    -> video.json
#   kernels    tests/kernels + tests/kv_rolling on the GPU (fp32/fp16, every block size) -> tests.xml
#              (dry run: collected only; make test runs them on CPU anyway)
#   serving    benchmarks/serving.py --gpu, if that script exists and takes --gpu -> serving.json
# plus log.txt (every part's output), parts.tsv (status per part) and summary.md (rewritten after
# each part, so a run cut short still returns one). At most 8 files: what the device tool returns.
#
# On the device machine: run from the repository root with .whl carried (make gpu-wheels); the wheels
# are installed with pip --no-index into a folder under /tmp. --dry-run: CPU only, TRITON_INTERPRET=1,
# tiny shapes, Python with -S and a stand-in for the device image's packages (gpu_wheels.py
# --simulate), a minute or two; tests/benchmarks/test_gpu_check.py runs it in `make test`.
set -uo pipefail

DRY=0
PARTS=env,tests,attention,video,kernels,serving
BUDGET=420
while (($#)); do
  case $1 in
    --dry-run) DRY=1 ;;
    --parts) PARTS=${2:?--parts needs a list}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2; }
for p in ${PARTS//,/ }; do
  case $p in env | tests | attention | video | kernels | serving) ;;
    *) echo "gpu_check.sh: unknown part '$p' (env, tests, attention, video, kernels, serving)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
OUT=${OUT:-$ROOT/runs/gpu-check}
mkdir -p "$OUT"
LOG=$OUT/log.txt
: >"$LOG"
: >"$OUT/parts.tsv"
PY=${PYTHON:-python3}
START=$SECONDS
FAILED=0
JUNIT=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-junit.XXXXXX")  # merged into $OUT/tests.xml after each run
SIM=""
trap 'rm -rf "$JUNIT" ${SIM:+"$SIM"}' EXIT
export PYTHONUNBUFFERED=1
say() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$LOG"; }

if ((DRY)); then
  # CPU only, kernels in the interpreter, and only the packages the device image has (plus the wheels).
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  SIM=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-image.XXXXXX")
  "$PY" benchmarks/gpu_wheels.py --simulate "$SIM" >>"$LOG" 2>&1 || { say "could not build the image stand-in"; exit 1; }
  export PYTHONPATH=$ROOT:$SIM
  PYRUN=("$PY" -S)
else
  shopt -s nullglob
  wheels=(.whl/*.whl)
  shopt -u nullglob
  SITE=${GPU_CHECK_SITE:-/tmp/streamserve-gpu-site}
  if ((${#wheels[@]})); then
    say "installing ${#wheels[@]} wheel(s) from .whl into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${wheels[@]}" >>"$LOG" 2>&1 || say "wheel install FAILED (see log.txt); parts needing them will fail"
  else
    say "no .whl/*.whl: nothing to install (make gpu-wheels, and carry .whl)"
  fi
  # The checkout itself: streamserve/__init__.py maps the top-level folders to streamserve.<name>.
  export PYTHONPATH=$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}
  PYRUN=("$PY")
fi

refresh_summary() { "${PYRUN[@]}" benchmarks/gpu_summary.py summary "$OUT" --quiet >>"$LOG" 2>&1; }

record() { # record NAME STATUS SECONDS DETAIL
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$OUT/parts.tsv"
  refresh_summary
}

wanted() { [[ ",$PARTS," == *",$1,"* ]]; }

part() { # part NAME CAP_SECONDS COMMAND... : run under min(CAP, budget left), record how it ended
  local name=$1 cap=$2
  shift 2
  wanted "$name" || return 0
  local left=$((BUDGET - (SECONDS - START)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 15)); then
    say "$name: skipped, ${left}s of the budget left"
    record "$name" skipped 0 "budget spent (${left}s left)"
    return 0
  fi
  say "$name (timeout ${limit}s): $*"
  local t0=$SECONDS rc status
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status="failed (rc $rc)" ;;
  esac
  ((rc == 0)) || FAILED=1
  say "$name: $status after $((SECONDS - t0))s"
  local cmd="$*"
  record "$name" "$status" $((SECONDS - t0)) "${cmd//"${PYRUN[*]} "/}"
}

# --- env
part env 45 "${PYRUN[@]}" benchmarks/gpu_summary.py env "$OUT/env.json"

# --- tests: every test file with a gpu mark, gpu-marked tests only (-v: a run cut short still shows
# each finished test in log.txt; junit is written only at the end)
pytest_part() { # pytest_part PART CAP SUITE PYTEST-ARGS...: junit merged into $OUT/tests.xml
  local name=$1 cap=$2 suite=$3
  shift 3
  part "$name" "$cap" "${PYRUN[@]}" -m pytest -p no:cacheprovider --continue-on-collection-errors -o \
    junit_suite_name="$suite" --junitxml="$JUNIT/$suite.xml" "$@"
  if [[ -f $JUNIT/$suite.xml ]]; then
    "${PYRUN[@]}" benchmarks/gpu_summary.py merge-junit "$OUT/tests.xml" "$JUNIT"/*.xml >>"$LOG" 2>&1
    refresh_summary
  fi
}
if wanted tests; then
  mapfile -t gpu_tests < <(grep -rlE --include='test_*.py' 'mark\.gpu' tests | sort)
  if ((${#gpu_tests[@]})); then
    pytest_part tests 75 gpu-marked -v -m gpu "${gpu_tests[@]}"
  else
    record tests skipped 0 "no test file has a gpu mark"
  fi
fi

# --- attention and video benchmarks
if ((DRY)); then
  part attention 120 "${PYRUN[@]}" benchmarks/attention.py --dry-run --json "$OUT/attention.json"
  part video 150 "${PYRUN[@]}" benchmarks/video.py --dry-run --json "$OUT/video.json"
else
  part attention 120 "${PYRUN[@]}" benchmarks/attention.py --json "$OUT/attention.json"
  part video 150 "${PYRUN[@]}" benchmarks/video.py --gpu-only --gpu-seconds 5 --json "$OUT/video.json"
fi

# --- kernels: the kernel and cache suites on the GPU (fp32/fp16, all block sizes and masks), gpu tests excluded
if ((DRY)); then
  pytest_part kernels 120 kernel-suite -q --collect-only -m "not gpu" tests/kernels tests/kv_rolling
else
  pytest_part kernels 120 kernel-suite -v -m "not gpu" tests/kernels tests/kv_rolling
fi

# --- serving: another benchmark's GPU mode, only when it exists and says it takes --gpu
if wanted serving; then
  flag() { grep -qE -- "(^|[^-[:alnum:]])$1([^-[:alnum:]]|\$)" <<<"$help"; }
  if [[ ! -f benchmarks/serving.py ]]; then
    record serving skipped 0 "benchmarks/serving.py does not exist"
  elif ! help=$(timeout 60 "${PYRUN[@]}" benchmarks/serving.py --help 2>&1); then
    record serving skipped 0 "serving.py --help failed: $(tail -n 1 <<<"$help")"
  elif ! flag --gpu; then
    record serving skipped 0 "serving.py has no --gpu option"
  elif ((DRY)) && ! flag --dry-run; then
    record serving skipped 0 "serving.py has no --dry-run option"
  else
    args=(--gpu)
    ((DRY)) && args+=(--dry-run)
    flag --json && args+=(--json "$OUT/serving.json")
    part serving 120 "${PYRUN[@]}" benchmarks/serving.py "${args[@]}"
  fi
fi

say "done in $((SECONDS - START))s; files in $OUT"
"${PYRUN[@]}" benchmarks/gpu_summary.py summary "$OUT"
exit $FAILED
