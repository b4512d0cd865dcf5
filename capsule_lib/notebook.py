"""Helpers for running the chapters outside the book build (Colab, plain Jupyter).

The chapters name computed numbers with myst-nb's `glue` so that the prose can quote them. The
book's build has myst-nb; Colab and a bare Jupyter do not, and there the prose is not rendered
from the notebook anyway. `glue` below uses myst-nb's when it is installed and otherwise only
shows the value (or nothing, with display=False), so every chapter runs in both places.
"""
from typing import Any

from IPython.display import display as show


def glue(name: str, variable: Any, display: bool = True) -> None:
    """myst_nb.glue(name, variable, display) where myst-nb is installed; else show or skip."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            show(variable)
        return
    myst_glue(name, variable, display=display)
