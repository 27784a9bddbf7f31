#!/bin/bash
# Compare training recipes of the embedded default model side by side on one GPU: each recipe trains
# from the shipped model's autoencoder (stage 1 skipped), stops after TL seconds of stage 3 at the
# latest, and is judged by scripts/eval_default_model.py; plus a CUDA check of LoRA training
# (fp16, mixed precision, gradient checkpointing). Logs go to $OUT/<recipe>.log.
#
#   OUT=sweep-out bash scripts/sweep_default_model.sh RECIPES   (DEV=cpu DS=256 TL=3 EVERY=40: dry run)
#
# RECIPES: a file with one recipe per line, "name --flag value ...", the flags of
# scripts/train_default_model.py on top of its defaults (e.g. scripts/sweeps/width_and_size.txt);
# lines starting with # are skipped. LORA=1 adds the CUDA check of LoRA training. Each result is
# judged with SEEDS seeds per prompt (every EVERY-th held-in combination, all held-out ones) for
# each sampler of SAMPLERS (comma-separated).
#
# Recipes are compared at equal steps, which is what matters for the CPU budget of the real training
# (about an hour on 2 cores); the GPU only makes the comparison fast. Results: README.
[ -f "$1" ] || { echo "usage: $0 RECIPES (a file, e.g. scripts/sweeps/width_and_size.txt)" >&2; exit 2; }
T0=$(date +%s)
OUT=${OUT:-sweep-out}; mkdir -p "$OUT"
if [ -d .whl ]; then  # packages missing on the GPU machine, brought along as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
V=models/Stable-diffusion/default-shapes.safetensors
PY=${PY:-python3}; TL=${TL:-270}; DEV=${DEV:-cuda}; DS=${DS:-24000}; EVERY=${EVERY:-2}; SEEDS=${SEEDS:-1}
IFS=',' read -r -a SAMPLERS <<< "${SAMPLERS:-Euler a}"  # e.g. SAMPLERS="Euler a,DPM++ 2M Karras"
run() {
  name=$1; shift
  log=$OUT/$name.log
  echo "config $name: $*" > $log
  timeout ${TT:-400} $PY scripts/train_default_model.py --device $DEV --dataset-size $DS --vae-from $V --out /tmp/sw/$name \
      --time-limit $TL "$@" 2>&1 | grep -E "unet step (0|[0-9]*000)/|time limit|wrote|Error|error|Traceback|File " >> $log
  echo "train done at $(( $(date +%s) - T0 )) s" >> $log
  # Straight to a file of its own (no pipe): what a killed evaluation printed so far is kept.
  for i in "${!SAMPLERS[@]}"; do
    timeout ${ET:-150} $PY scripts/eval_default_model.py --ckpt /tmp/sw/$name/default-shapes.safetensors \
        --seeds $SEEDS --every $EVERY --device $DEV --sampler "${SAMPLERS[$i]}" > $OUT/$name.eval$i.txt 2>&1
    grep -E "^## |^shape colour" $OUT/$name.eval$i.txt >> $log
  done
  echo "eval done at $(( $(date +%s) - T0 )) s" >> $log
}
while read -r name flags; do
  [ -n "$name" ] && [ "${name#\#}" = "$name" ] && run "$name" $flags &
done < "$1"
if [ -n "$LORA" ]; then
  ( timeout 400 $PY scripts/eval_lora.py --device $DEV --steps ${LSTEPS:-500} --seeds 2 --threads 2 > $OUT/lora_cuda.log 2>&1;
    echo "lora done at $(( $(date +%s) - T0 )) s rc $?" >> $OUT/lora_cuda.log ) &
fi
wait
echo "all done at $(( $(date +%s) - T0 )) s"
