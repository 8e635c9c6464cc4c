#!/usr/bin/env bash
# hpsearch's GPU checks in one prepared run, for a lent GPU machine (the `device` tool): a real search in
# bf16/TF32, GPU memory after every trial of many, hpsearch's loop against the HF Trainer, model FLOPs
# utilisation of a BERT-base-sized model, and the out-of-memory path on a real card (a batch that does not fit
# trains as micro-batches with the same effective batch size). About 6-8 minutes on an H100.
#
# That machine's python3 holds a CUDA torch and transformers but none of optuna, datasets, sqlalchemy...; they
# travel as wheels. Here, once:   make gpu-wheels              (into .whl/, git-ignored)
# There, one device call:          bash bench/gpu_check.sh      (carry [".whl"], timeout_s 600)
# Everything lands in $OUT, which the device tool brings back: gpu_check.log, bench-demo.json, mfu.json,
# oom-trial.json. A CPU rehearsal of the plumbing here: SMALL=1 PYTHON=.venv/bin/python bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/hpsearch-gpu-check}
PY=${PYTHON:-python3}
SMALL=${SMALL:-}
mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${SKIP_INSTALL:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed"; exit 1; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
W=$(mktemp -d)
step() { echo; echo "=== $* ($(date +%T))"; }

main() {
  step "machine"
  # datasets 5.2 needs pyarrow >= 24, which the image's own pyarrow may not be (55 MB as a wheel: over what a call
  # carries beside the rest); then this says so at once, and .whl/ needs an older datasets
  "$PY" -c "import datasets, optuna, sqlalchemy, pyarrow; print('pyarrow', pyarrow.__version__, 'datasets', datasets.__version__)" \
    || { echo "the packages above do not import: see bench/gpu_check.sh's header"; return 1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" - <<'EOF'
import optuna, torch, transformers
from hpsearch.train import resolve_device, resolve_precision
device = resolve_device("auto")
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", device, "precision auto ->",
      resolve_precision("auto", device), "| transformers", transformers.__version__, "optuna", optuna.__version__)
if device.type == "cuda":
    print(torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
EOF

  # The issue's figures on the GPU: C (hpsearch's default) against D (Trainer.hyperparameter_search) on the demo
  # data, throughput of both loops at batch 32, and the device memory after each of C's trials (flat = released).
  step "1. bench: arms C and D on the demo data, throughput, device memory over the trials"
  local trials=16 rows=3000
  [ -n "$SMALL" ] && trials=3 rows=300
  timeout 240 "$PY" -m bench.run --config studies/demo.yaml --arms C,D --seeds 0 --jobs 1 --n-trials "$trials" \
    --set "data.demo_size=$rows" --throughput-repeats 2 --retrain-seeds 1 --out "$OUT/bench-demo.json"
  "$PY" - "$OUT/bench-demo.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["per_seed"]["0"]["C"]
print("C device MB after each trial:", c["device_memory_mb_after_trials"])
print("C train samples/s:", c["train_samples_per_second"], "| throughput:", r["throughput"])
EOF

  step "2. model FLOPs utilisation, BERT-base-sized, against the card's measured matmul peak"
  if [ -n "$SMALL" ]; then
    timeout 120 "$PY" -m bench.mfu --small --steps 3 | tee "$OUT/mfu.json"
  else
    timeout 90 "$PY" -m bench.mfu | tee "$OUT/mfu.json"
  fi

  # A BERT-large-sized model (random weights, no download) on 512-token texts with a batch of 1024 does not fit
  # in 80 GB: the trial must train it as micro-batches (recorded as micro_batch_size) and complete.
  step "3. out of memory on the card: the same batch as micro-batches"
  "$PY" - "$W" "$SMALL" <<'EOF'
import random, sys
from pathlib import Path
from transformers import BertConfig, BertForSequenceClassification
from hpsearch.models import train_tiny_tokenizer
work, small = Path(sys.argv[1]), bool(sys.argv[2])
rng = random.Random(0)
words = "good bad fine awful great dull film plot cast story music scene actor ending".split()
rows = [(" ".join(rng.choice(words) for _ in range(700)), rng.choice("ab")) for _ in range(256 if small else 2048)]
(work / "long.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
tokenizer = train_tiny_tokenizer([t for t, _ in rows[:200]], vocab_size=200)
size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if small else dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, num_labels=2, **size)
BertForSequenceClassification(config).save_pretrained(work / "large")
tokenizer.save_pretrained(work / "large")
EOF
  local batch=1024 length=512
  [ -n "$SMALL" ] && batch=64 length=64
  timeout 180 "$PY" -m hpsearch search studies/demo.yaml --study-name oom --storage "sqlite:///$W/oom.db" \
    --n-trials 1 --set data.name=null --set "data.train_file=$W/long.csv" --set "model.name=$W/large" \
    --set "model.max_length=$length" --set train.n_epochs=1 --set "train.checkpoint_dir=$W/ck" \
    --set "search_space.batch_size=$batch" --set search_space.learning_rate=1e-5
  "$PY" - "$W/oom.db" "$OUT/oom-trial.json" <<'EOF'
import json, sys
import optuna
t = optuna.load_study(study_name="oom", storage=f"sqlite:///{sys.argv[1]}").trials[0]
row = {"state": t.state.name, "params": t.params, "user_attrs": t.user_attrs}
json.dump(row, open(sys.argv[2], "w"), indent=1, default=str)
print("trial 0:", t.state.name, "batch", t.params.get("batch_size", "fixed"), "micro_batch_size",
      t.user_attrs.get("micro_batch_size"), "| fail_reason", t.user_attrs.get("fail_reason"))
EOF

  step "4. the training tests, on the GPU where they ask for device auto"
  timeout 90 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_train.py tests/test_models.py
  step "done"
}

main 2>&1 | tee "$OUT/gpu_check.log"
