"""The study service: spec -> cells -> one Ray Tune run (an Optuna study per cell) -> MLflow.

Modules, in the order data flows through them:

- :mod:`study.spec`: the typed, validated study spec (TOML file or preset + ``--set`` overrides).
- :mod:`study.cells`: expansion of a spec into cells (data set x model x ordering).
- :mod:`study.preflight`: checks that need the outside world (data files, tracking, Ray).
- :mod:`study.searcher`: a Ray Tune searcher owning one Optuna study per cell.
- :mod:`study.scheduler`: optional early stopping, one ASHA per cell (``scheduler = "asha"``).
- :mod:`study.tuner`: the single Ray Tune run of a study, and its resume.
- :mod:`study.tracking`: the MLflow layout (parent run per cell, child run per trial).
- :mod:`study.progress`: the live per-cell progress display and the end-of-study summary.
- :mod:`study.cli`: the ``study`` command.
"""
