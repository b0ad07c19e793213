"""matplotlib for servers: the headless backend and the colours every figure shares.

Import ``plt`` from here, not from matplotlib, so the ``Agg`` backend is chosen before pyplot loads
(reports and training curves are drawn on machines without a display).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

CLASS_COLOURS = {"benign": "#2ca02c", "malignant": "#d62728"}
"""One colour per class, in every figure of the suite."""

__all__ = ["CLASS_COLOURS", "plt"]
