#!/usr/bin/env bash
# One-call device check of shtopk on a machine with an NVIDIA GPU, inside 8 minutes of wall time.
#
# From the repository root of a checkout (with its .git, for the asv step):
#
#   asv_benchmarks/device_check.sh [--out DIR] [--commits "OLD NEW"]
#
# 1. installs what the GPU image lacks from wheels carried in .whl/ (pip install --no-deps,
#    no network: array-api-compat, array-api-strict, asv and asv's own needs);
# 2. runs the GPU half of the test suite (the cupy and torch-cuda cases, and tests named gpu);
# 3. runs asv_benchmarks/gpu_table.py on torch and CuPy (the Triton kernels against reading E
#    once, torch.topk + gather, the neutral core and the iterative baseline);
# 4. runs the asv device benchmarks (DeviceTime, successive halving) on two commits through
#    asv_benchmarks/track_commits.py and compares them;
# and writes into DIR (default: $OUT when set, else results/device_check):
#   log.txt, tests.txt, gpu_table.txt, gpu_table.csv, asv_compare.txt, summary.txt.
# Each step has a time budget (seconds; override with the variables below), so that the whole
# check ends inside 8 minutes and can run twice in a 15-minute GPU slot; a step that fails or
# runs out of time is reported in summary.txt and the next step still runs.
#
# The image is expected to hold python3 with torch, Triton, CuPy, numpy, pytest and hypothesis.
# Put the missing wheels into .whl/ first, on a machine with network (git-ignored folder):
#
#   asv_benchmarks/device_check.sh --fetch-wheels
#
# Other modes: --dry-run prints the commands without running them; --help prints this text.
#
# Budgets: DEVICE_CHECK_TESTS_S (140), DEVICE_CHECK_TABLE_S (170), DEVICE_CHECK_ASV_S (130).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

# What the GPU image lacks, at versions tested with shtopk (Python 3.12 wheels).
WHEELS=(
    array-api-compat==1.16.0
    array-api-strict==2.6.1
    asv==0.6.6
    asv-runner==0.3.2
    json5==0.17.3
    virtualenv==21.15.11
    distlib==0.4.4
    platformdirs==4.14.8
    python-discovery==1.9.6
    pympler==1.1
    importlib-metadata==10.2.0
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

MODE=run
COMMITS="HEAD~1 HEAD"
DIR="${OUT:-$ROOT/results}"
[ -n "${OUT:-}" ] || DIR="$DIR/device_check"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) MODE=dry ;;
        --fetch-wheels) MODE=fetch ;;
        --commits) COMMITS="$2"; shift ;;
        --out) DIR="$2"; shift ;;
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$MODE" = fetch ]; then
    platform_args=()
    for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
    mkdir -p .whl
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platform_args[@]}" -d .whl "${WHEELS[@]}"
fi

TESTS_S="${DEVICE_CHECK_TESTS_S:-140}"
TABLE_S="${DEVICE_CHECK_TABLE_S:-170}"
ASV_S="${DEVICE_CHECK_ASV_S:-130}"
SUMMARY=()

# step NAME SECONDS COMMAND...: run COMMAND under a time limit, record its exit status and duration.
step() {
    local name="$1" budget="$2"
    shift 2
    echo "== $name (at most ${budget}s): $*"
    if [ "$MODE" = dry ]; then
        SUMMARY+=("$name: dry run")
        return 0
    fi
    local start=$SECONDS rc
    timeout --signal=INT --kill-after=10 "$budget" "$@"
    rc=$?
    local verdict="ok"
    [ $rc -eq 0 ] || verdict="FAILED (exit $rc)"
    [ $rc -ne 124 ] || verdict="OUT OF TIME (${budget}s)"
    SUMMARY+=("$name: $verdict in $((SECONDS - start))s")
}

if [ "$MODE" = run ]; then
    mkdir -p "$DIR"
    exec > >(tee "$DIR/log.txt") 2>&1
fi
echo "shtopk device check, $(date -u +%Y-%m-%dT%H:%M:%SZ), output in $DIR"

# 1. what the image lacks, from the carried wheels, beside (not into) the image's environment
SITE=/tmp/shtopk-site
if compgen -G ".whl/*.whl" > /dev/null; then
    step "install carried wheels" 30 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" .whl/*.whl
else
    echo "no wheels in .whl/ (see --fetch-wheels): using what the image has"
fi
export PATH="$SITE/bin:$PATH"
export ASV_PYTHONPATH="$SITE"  # asv drops PYTHONPATH but passes this one on
export PYTHONUNBUFFERED=1

if [ "$MODE" = run ]; then
    nvidia-smi -L || echo "nvidia-smi failed"
    PYTHONPATH="$SITE:$ROOT" python3 -c "
import importlib
for name in ('torch', 'triton', 'cupy', 'numpy', 'array_api_compat', 'asv'):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, 'missing:', exc)
import torch
print('GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible to torch')
"
fi

# 2. the GPU half of the tests: every cupy and torch-cuda case, and the tests named gpu
step "GPU tests" "$TESTS_S" env PYTHONPATH="$SITE:$ROOT" \
    bash -c "set -o pipefail; python3 -m pytest -q -p no:cacheprovider -rs tests -k 'cupy or cuda or gpu' 2>&1 \
        | tee '$DIR/tests.txt'"

# 3. the GPU table, both backends
step "GPU table" "$TABLE_S" env PYTHONPATH="$SITE:$ROOT" \
    bash -c "set -o pipefail; python3 asv_benchmarks/gpu_table.py --backend torch cupy --repeat 10 --slow-ms 100 \
        --out '$DIR/gpu_table.csv' | tee '$DIR/gpu_table.txt'"

# 4. asv's device benchmarks of successive halving on two commits
if [ "$MODE" = dry ] || git rev-parse --verify --quiet HEAD > /dev/null; then
    # shellcheck disable=SC2086  # COMMITS is a list of revisions
    step "asv, two commits" "$ASV_S" env PYTHONPATH="$SITE" SHTOPK_BENCH_METHODS=successive_halving \
        python3 asv_benchmarks/track_commits.py $COMMITS --bench 'DeviceTime.track_forward' \
        --compare-out "$DIR/asv_compare.txt"
else
    SUMMARY+=("asv, two commits: skipped (no git history in this copy)")
fi

{
    echo "shtopk device check, $(date -u +%Y-%m-%dT%H:%M:%SZ), ${SECONDS}s in all"
    printf '%s\n' "${SUMMARY[@]}"
} | if [ "$MODE" = run ]; then tee "$DIR/summary.txt"; else cat; fi
