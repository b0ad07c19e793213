"""Evaluation: score ready methods on a dataset and keep what they did.

``harness`` (evaluate one ready method on a split's images, one record each), ``scoring`` (a map →
Dice counts and histograms), ``metrics`` (Dice, PxAP, AUC from histograms), ``records`` (the JSON
Lines record file), ``manifest`` (what produced a run folder), ``identity`` (what a method's records
depend on), ``figure_maps`` (the qualitative figure's small maps), ``run_lock`` (one run per
folder), ``run_folder`` (what a run folder holds; ``--overwrite``), ``profiling`` (time, memory,
FLOPs) and ``bench`` (speed and memory benchmarks).
Nothing here builds or trains a method: ``wsl_bench.pipeline`` does, and hands them over ready.
"""
