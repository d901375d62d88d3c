"""Analyses of finished surfaces and training runs: sharpness numbers and PCA trajectory directions.

:mod:`distland.analysis.sharpness` needs only numpy and h5py; :mod:`distland.analysis.trajectory` imports torch, so
it is not imported here (``import distland.analysis`` stays cheap for ``distland info``).
"""
from .sharpness import format_report, sharpness_report, store_report

__all__ = ["format_report", "sharpness_report", "store_report"]
