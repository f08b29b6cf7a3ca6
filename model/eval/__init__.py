"""Evaluation parts: metrics, robustness perturbations, per-epoch validation and the report."""
