#!/usr/bin/env bash
# One retraining, run by the trainer container of a TrainJob (Kubeflow Trainer's torch runtime) on every
# training node: `bash retrain.sh OPTIONS` (the chart ships it in its training ConfigMap).
#   1. Every node: `torchrun --no-python pinrec train` on the event log into <models>/releases/<id>/pretrained.
#      torchrun takes the node count, processes per node, this node's rank and the master's address and port
#      from the PET_* variables the torch runtime sets (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
#      PET_MASTER_ADDR, PET_MASTER_PORT); nothing here names them.
#   2. Node rank 0 only, after torchrun exits: `pinrec finetune` of every --surface into
#      <models>/releases/<id>/finetuned-<id> (with no surface, the pretrained artifact is the candidate).
#   3. Node rank 0 only: `pinrec promote`, which re-points the serving link at the candidate only when its
#      offline metrics are no worse (the predictor then swaps without a restart). A refusal (exit 3) keeps the
#      served model and ends the run successfully: the decision is in <candidate>/gate.json.
# <id> is the TrainJob's name (PINREC_RELEASE_ID, from its pods' JobSet label), else the UTC time this node
# started. torchrun places global rank 0, the process that writes the artifact, on node rank 0.
#
# Options: --event-log DIR --models DIR --serving LINK [--surface NAME]... [--train-arg ARG]...
#          [--finetune-arg ARG]... [--gate-metric NAME]... [--gate-tolerance FLOAT]
# (each --train-arg / --finetune-arg passes one more argument to `pinrec train` / `pinrec finetune`).
set -euo pipefail

usage() {
  echo "retrain.sh: $1 (options: see the top of this script)" >&2
  exit 2
}

event_log="" models="" serving=""
surfaces=() train_args=() finetune_args=() gate_args=()
while (($#)); do
  (($# >= 2)) || usage "$1 needs a value"
  case "$1" in
    --event-log) event_log=$2 ;;
    --models) models=$2 ;;
    --serving) serving=$2 ;;
    --surface) surfaces+=(--surface "$2") ;;
    --train-arg) train_args+=("$2") ;;
    --finetune-arg) finetune_args+=("$2") ;;
    --gate-metric) gate_args+=(--metric "$2") ;;
    --gate-tolerance) gate_args+=(--tolerance "$2") ;;
    *) usage "unknown option $1" ;;
  esac
  shift 2
done
[[ -n $event_log && -n $models && -n $serving ]] || usage "--event-log, --models and --serving are required"

# The TrainJob's name (PINREC_RELEASE_ID) when Trainer runs it: a restarted run reuses the folder, skips what
# is already written and resumes training from the checkpoint beside it.
release_id=${PINREC_RELEASE_ID:-$(date -u +%Y%m%dT%H%M%SZ)}
release="$models/releases/$release_id"
# PET_NODE_RANK is what torchrun uses; the Job's completion index is the same number.
node_rank=${PET_NODE_RANK:-${JOB_COMPLETION_INDEX:-0}}
echo "retraining $release_id on node $node_rank of ${PET_NNODES:-1}: event log $event_log"

if [[ -e $release/pretrained/manifest.json ]]; then
  echo "$release/pretrained is already trained (a restarted run)"
else
  torchrun --no-python pinrec train --data "$event_log" --out "$release/pretrained" "${train_args[@]}"
fi

if [[ $node_rank != 0 ]]; then
  echo "node $node_rank done; node 0 finetunes and promotes"
  exit 0
fi

candidate="$release/pretrained"
if ((${#surfaces[@]})); then
  candidate="$release/finetuned-$release_id"
  if [[ ! -e $candidate/manifest.json ]]; then
    pinrec finetune --artifact "$release/pretrained" --data "$event_log" "${surfaces[@]}" --out "$candidate" \
      "${finetune_args[@]}"
  fi
fi

status=0
pinrec promote --candidate "$candidate" --serving "$serving" "${gate_args[@]}" || status=$?
case $status in
  0) echo "now serving $candidate" ;;
  3) echo "kept the served model; the gate's decision: $candidate/gate.json" ;;
  *) exit "$status" ;;
esac
