#!/usr/bin/env bash
# The named-entity check of a real model, through the CLI only (issue #18): SmolLM2-135M-Instruct, layer 18,
# 808 countries / cities / languages (examples/entities/entities.json, built by scripts/build_entities.py),
# vectors = last-token state of "Tell me about {name}." minus the set mean, 80/20 split by entity,
# labels "{name}, a {category}"; the nearest-neighbour baseline (no training) is scored beside the adapters.
# Usage: scripts/entities_experiment.sh OUT_DIR [KIND ...] (default: the default kind;
# low-rank kinds get the default rank 64). About 20-35 min per kind on 2 CPU cores.
set -euo pipefail
out=${1:?usage: entities_experiment.sh OUT_DIR [KIND ...]}; shift
kinds=("${@:-scalar_affine_plus_low_rank}")
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
mkdir -p "$out" && cd "$out"
$py "$here/scripts/score_entities.py" prepare "$here/examples/entities/entities.json"
selfie extract --model smollm2-135m-instruct --layer 18 --prompts prompts.txt --out states.safetensors
$py "$here/scripts/score_entities.py" split
selfie describe --model smollm2-135m-instruct --vectors heldout.safetensors#layer_18 --scale 1.6 --scale 3.2 \
    --scale 6.4 --max-new-tokens 16 --out untrained.jsonl
# the zero-training baseline: each held-out entity gets the label of its nearest training entity (cosine, centred)
selfie baseline nearest --labels labels.json --vectors heldout.safetensors#layer_18 --out nearest.jsonl
for kind in "${kinds[@]}"; do
  cat > "$kind.yaml" <<YAML
model: {name: smollm2-135m-instruct}
data: {labels_file: labels.json, batch_size: 32}
projection: {type: $kind}
training: {max_steps: 300, checkpoint_dir: runs}
logging: {use_wandb: false}
experiment_name: $kind
YAML
  selfie train "$kind.yaml"
  selfie describe --model smollm2-135m-instruct --adapter "runs/$kind/final.safetensors" \
      --vectors heldout.safetensors#layer_18 --max-new-tokens 16 --out "$kind.jsonl"
done
for f in untrained.jsonl nearest.jsonl "${kinds[@]/%/.jsonl}"; do echo "== $f"; $py "$here/scripts/score_entities.py" score "$f"; done
