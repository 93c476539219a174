"""Matplotlib without pyplot: every figure of the package is drawn here, notebook-safe.

A figure is a ``matplotlib.figure.Figure`` with its own Agg canvas (``FigureCanvasAgg``), drawn with
the object API and saved with ``Figure.savefig``. Nothing calls ``matplotlib.use`` or imports
``matplotlib.pyplot``, so writing figures never switches a notebook's backend, never registers a
figure with pyplot (nothing pops up, nothing to close) and never changes pyplot's current figure.

The functions mirror the few pyplot names the figure writers use (``subplots``, ``Line2D``,
``close``, ``cm``), so a writer reads as before with ``plt = plotting``.
"""

from __future__ import annotations

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = ["Figure", "Line2D", "close", "cm", "rgb", "subplots"]


class _Colormaps:
    """``cm.tab10`` etc.: registered colormaps by attribute (pyplot's ``plt.cm`` spelling)."""

    def __getattr__(self, name: str):
        return matplotlib.colormaps[name]


cm = _Colormaps()


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, dpi=None, **kwargs):
    """``(figure, axes)`` like ``pyplot.subplots`` (``squeeze``, ``gridspec_kw``, ... pass through),
    on a new Agg-backed ``Figure`` that pyplot does not know of."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def close(fig: Figure) -> None:
    """Free the figure's artists (it belongs to no pyplot manager: there is nothing else to close)."""
    fig.clear()


def rgb(fig: Figure):
    """The figure rendered by its Agg canvas as a ``[H, W, 3]`` uint8 array."""
    import numpy as np

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
