#!/usr/bin/env bash
# The speed benchmark on an NVIDIA GPU, every Keras backend against lightly + torch, at
# ImageNet-like sizes: SimCLR, MoCo-v2 and BYOL on ResNet-50 at 224 px (batch 128), DINO
# on ViT-S/16 (2 x 224 px + 4 x 96 px local crops, batch 64). Writes the table to
# $OUT_DIR/speed.md (+ speed.json, workers/*.log), one entry at a time, so whatever
# finished before the time limit is there. SimCLR and DINO run first (one ResNet-50 and
# one ViT-S/16 method), then MoCo-v2 and BYOL as the budget allows: on an H200 XLA's first
# step (compilation with autotuning) took 83-89 s per ResNet-50 method.
#
# For GPU machines only; CI never runs it (it is no test and installs CUDA builds).
#
#     bash tools/gpu_check.sh                       # from the repository root
#     OUT_DIR=gpu_speed BUDGET_S=470 bash tools/gpu_check.sh
#     WHEELS_DIR=.whl bash tools/gpu_check.sh       # offline: install from wheels there
#     ONLY_BACKENDS=jax bash tools/gpu_check.sh     # a subset of the backends it finds
#     ONLY_METHODS=byol,dino_vit bash tools/gpu_check.sh  # a subset of the methods
#
# What it installs, into the Python that runs it ($PYTHON, default python3), only what is
# missing: keras, keras_ssl (this checkout, editable, no deps), lightly 1.6.0, timm, and
# CUDA builds of jax ("jax[cuda12]"), torch (the PyTorch index's default CUDA wheel) and
# tensorflow ("tensorflow[and-cuda]"). On a machine without network access put the
# wheels in $WHEELS_DIR first (`pip download keras lightly==1.6.0 timm -d .whl` on a
# machine with access; CUDA jax/torch/tensorflow are usually on GPU images already); a
# backend whose CUDA build cannot be installed is left out of the run and named.
#
# What it checks: train-step images/s of every backend and of lightly, the ratio
# keras_ssl / lightly, FLOPs (torch's FlopCounterMode on lightly's model), first-step
# (compile) time, peak host and device memory. What it cannot check: augmentation and
# `fit` throughput (skipped to fit the time budget: pass PHASES=step,augment,fit to add
# them), multi-GPU runs, and anything about the CPU numbers of issue #7. The timings
# are one machine's: compare ratios measured in one run.
set -u -o pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-gpu_speed}
BUDGET_S=${BUDGET_S:-470}     # the whole run stays under 8 minutes
PHASES=${PHASES:-step}
WHEELS_DIR=${WHEELS_DIR:-}
START=$(date +%s)
mkdir -p "$OUT_DIR"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi fails); this script is for GPU machines." >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | tee "$OUT_DIR/gpu.txt"

pip_install() {  # pip_install ARGS...: from $WHEELS_DIR when set, else from the index
  if [ -n "$WHEELS_DIR" ]; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS_DIR" "$@"
  else
    "$PYTHON" -m pip install -q "$@"
  fi
}
has() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

has keras || pip_install "keras>=3.15" || echo "gpu_check: could not install keras" >&2
has keras_ssl || "$PYTHON" -m pip install -q --no-deps -e . \
  || echo "gpu_check: could not install keras_ssl" >&2
has lightly || pip_install lightly==1.6.0 || echo "gpu_check: could not install lightly" >&2
has timm || pip_install timm || echo "gpu_check: could not install timm" >&2

BACKENDS=""
if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
   || { pip_install torch torchvision \
        && "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; }; then
  BACKENDS="torch"
else
  echo "gpu_check: no CUDA torch: the torch backend and the lightly side cannot run." >&2
fi
jax_gpu() { "$PYTHON" -c "import jax, sys; sys.exit(0 if jax.devices()[0].platform == 'gpu' else 1)" 2>/dev/null; }
if jax_gpu || { pip_install "jax[cuda12]" && jax_gpu; }; then
  BACKENDS="$BACKENDS,jax"
else
  echo "gpu_check: no CUDA jax: the jax backend is left out." >&2
fi
tf_gpu() { "$PYTHON" -c "import tensorflow as tf, sys; sys.exit(0 if tf.config.list_physical_devices('GPU') else 1)" 2>/dev/null; }
if tf_gpu || { pip_install "tensorflow[and-cuda]" && tf_gpu; }; then
  BACKENDS="$BACKENDS,tensorflow"
else
  echo "gpu_check: no CUDA tensorflow: the tensorflow backend is left out." >&2
fi
BACKENDS=${BACKENDS#,}
if [ -n "${ONLY_BACKENDS:-}" ]; then  # e.g. ONLY_BACKENDS=jax: time a subset of those found
  kept=""
  for b in ${ONLY_BACKENDS//,/ }; do
    case ",$BACKENDS," in *",$b,"*) kept="$kept,$b" ;; esac
  done
  BACKENDS=${kept#,}
fi
if [ -z "$BACKENDS" ]; then
  echo "gpu_check: no Keras backend sees the GPU; nothing to time." >&2
  exit 1
fi
echo "gpu_check: backends $BACKENDS; installing took $(( $(date +%s) - START )) s"

LIGHTLY_ARGS=(--lightly-python "$(command -v "$PYTHON")")
has lightly || LIGHTLY_ARGS=(--no-lightly)

run() {  # run METHODS ARGS...: one benchmark entry inside what is left of the budget
  local methods=$1
  if [ -n "${ONLY_METHODS:-}" ]; then  # keep the entry's methods that ONLY_METHODS names
    methods=""
    for m in ${1//,/ }; do
      case ",$ONLY_METHODS," in *",$m,"*) methods="$methods,$m" ;; esac
    done
    methods=${methods#,}
    [ -z "$methods" ] && return
  fi
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -lt 60 ]; then
    echo "gpu_check: $1 skipped, $left s left of the budget" | tee -a "$OUT_DIR/skipped.txt"
    return
  fi
  timeout --kill-after=10 "$left" "$PYTHON" tools/benchmark_speed.py \
    --device cuda --backends "$BACKENDS" "${LIGHTLY_ARGS[@]}" --phases "$PHASES" \
    --methods "$methods" --output-dir "$OUT_DIR/$1" --steps 5 --rounds 3 --warmup 2 "${@:2}" \
    2>&1 | tee "$OUT_DIR/$1.log" | grep -E '^(==|  )'
}

# ResNet-50 at 224 px, the ImageNet recipes' sizes; one DINO on ViT-S/16 with multi-crop.
RESNET=(--backbone resnet50 --image-size 224 --batch-size 128)
run simclr "${RESNET[@]}"
# XLA's GPU autotuning of this step had not finished after 200 s on an H200; untuned, its
# Triton GEMM fusions ran the step at 0.30x lightly, with cuBLAS's GEMMs at 1.00x (33 s to
# compile). JAX_VIT_XLA_FLAGS="" keeps XLA's defaults; either way after your own XLA_FLAGS.
XLA_FLAGS="${XLA_FLAGS:-} ${JAX_VIT_XLA_FLAGS---xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false}" \
  run dino_vit --vit vit_small --patch-size 16 --image-size 224 --local-size 96 \
  --local-crops 4 --dino-batch-size 64
run mocov2,byol "${RESNET[@]}"

{
  echo "# GPU speed check ($(head -n1 "$OUT_DIR/gpu.txt"))"
  echo
  for part in simclr dino_vit mocov2,byol; do
    part="$OUT_DIR/$part/speed.md"
    [ -f "$part" ] && cat "$part" && echo
  done
  [ -f "$OUT_DIR/skipped.txt" ] && cat "$OUT_DIR/skipped.txt"
} > "$OUT_DIR/speed.md"
echo "gpu_check: $(( $(date +%s) - START )) s in all; table in $OUT_DIR/speed.md"
cat "$OUT_DIR/speed.md"
