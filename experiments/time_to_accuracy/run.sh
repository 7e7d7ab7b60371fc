#!/usr/bin/env bash
# Issue 35's time-to-accuracy figure and table: every run of a shipped target with its curve on this machine.
# The label of each says its precision and cores (nothing in a history says on what it ran).
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m schnetqm9.analysis.time_to_accuracy \
    "U0 shipped: 120-epoch cosine (bf16, 1 core)=experiments/U0_120epochs/history_U0.csv" \
    "U0 shipped before: 95 min budget (fp32, 1 core)=experiments/time_to_accuracy/history_U0_95min.csv" \
    "U0 5 epochs (fp32, 1 core)=experiments/precision/history_U0_fp32.csv" \
    "U0 5 epochs (bf16, 1 core)=experiments/precision/history_U0_bf16.csv" \
    "U0 of the all-target model (fp32)=models/schnet_qm9_all.pth@U0" \
    "gap shipped: 70 min budget (fp32, 1 core)=models/schnet_qm9_gap.pth" \
    "gap 5 epochs (fp32, 1 core)=experiments/precision/history_gap_fp32.csv" \
    "gap 5 epochs (bf16, 1 core)=experiments/precision/history_gap_bf16.csv" \
    "gap of the all-target model (fp32)=models/schnet_qm9_all.pth@gap" \
    "HOMO shipped: 10 epochs (bf16, 1 core)=experiments/homo10/history_homo.csv" \
    "HOMO shipped until 2026-12-08: 10 epochs (bf16, 1 core)=experiments/homo10/history_homo10_bf16.csv" \
    "HOMO 60 min budget (fp32, 1 core)=experiments/attention/history_homo_mean.csv" \
    "HOMO of the all-target model (fp32)=models/schnet_qm9_all.pth@homo" \
    "LUMO shipped: 10 epochs (bf16, 1 core)=experiments/lumo10/history_lumo.csv" \
    "LUMO shipped until 2026-12-08: 10 epochs (bf16, 1 core)=experiments/precision/history_lumo10_bf16.csv" \
    "LUMO 10 epochs (fp32, 1 core)=experiments/attention/history_lumo10_mean.csv" \
    "LUMO of the all-target model (fp32)=models/schnet_qm9_all.pth@lumo" \
    --plot docs/figures/time_to_accuracy.png --json experiments/time_to_accuracy/time_to_accuracy.json "$@"
