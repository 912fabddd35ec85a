#!/usr/bin/env bash
# Yes/no probes on the named-entity set, through the CLI only (issue #25): after scripts/entities_experiment.sh
# (OUT_DIR holds heldout.safetensors, heldout.json, labels.json and runs/<default kind>/final.safetensors).
# "Is {vector} a country / a city / a language? Answer yes or no.", choices Yes No, balanced accuracy for
# (1) the untrained baseline over a scale sweep, (2) the meaning-only adapter (zero-shot questions) and
# (3) an adapter trained on the labels plus the three question-answer pairs per training entity.
# Usage: scripts/ask_entities.sh OUT_DIR [STEPS] (default 100 training steps; ~60 min on a busy 2-core CPU).
set -euo pipefail
out=${1:?usage: ask_entities.sh OUT_DIR [STEPS]}; steps=${2:-100}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
cd "$out"
kind=scalar_affine_plus_low_rank
questions=(--question "Is {vector} a country? Answer yes or no." --question "Is {vector} a city? Answer yes or no."
           --question "Is {vector} a language? Answer yes or no." --choices Yes No)
probe() { selfie ask --model smollm2-135m-instruct --vectors heldout.safetensors#layer_18 "${questions[@]}" "$@"; }
probe --scale 0.8 1.6 3.2 6.4 12.8 --out ask_untrained.jsonl
probe --adapter "runs/$kind/final.safetensors" --out ask_meaning.jsonl
$py "$here/scripts/score_ask.py" qa labels.json labels_qa.json
cat > qa.yaml <<YAML
model: {name: smollm2-135m-instruct}
data: {labels_file: labels_qa.json, batch_size: 32, question_ratio: 0.5}
projection: {type: $kind}
training: {max_steps: $steps, checkpoint_dir: runs, validation_every_n_steps: 50, val_fraction: 0.25}
logging: {use_wandb: false, log_sample_generations: 0}
experiment_name: qa
YAML
selfie train qa.yaml
probe --adapter runs/qa/final.safetensors --out ask_qa.jsonl
for f in ask_untrained ask_meaning ask_qa; do echo "== $f"; $py "$here/scripts/score_ask.py" score "$f.jsonl" heldout.json; done
