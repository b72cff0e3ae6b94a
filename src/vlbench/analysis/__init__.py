"""Analysis of finished runs: statistics (stats: the numbers over rows; crossed: the design-aware inference;
folders: a run folder's scored images as rows), the HTML report (report, from templates/), the VL conditioning's
diagnostics (diagnose: the one torch module here) and the attention heat maps (heatmap).

Torch-free when imported: this package's __init__ imports nothing, so `vlbench.analysis.stats` costs no torch.
It reads output folders (vlbench.experiments); the experiments package never imports it: whoever finishes a folder
(the command line, the worker's batch export, the search) asks for the report.
"""
