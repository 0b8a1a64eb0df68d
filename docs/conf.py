"""Sphinx configuration of pyrovae's documentation.

Build: ``python -m sphinx -W -b html docs docs/_build/html``. Before the sources are read, the
pages that must not drift from the code are generated from it (``docs/_generated``, not
committed): the API reference from the package facades and the docstrings, the config
reference from the config dataclasses and their field comments, the command-line reference
from the argument parser; the notebooks are copied in with their stored outputs (they are
rendered, not re-executed); the results page's plots are drawn (``docs/figures.py``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))

from figures import write_figures  # noqa: E402  (docs/figures.py, beside this file)
from generate import write_generated  # noqa: E402  (docs/generate.py)

project = "pyrovae"
author = "the pyrovae developers"
copyright = "2026, the pyrovae developers"
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.viewcode", "sphinx.ext.mathjax"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "_generated/*_reference.md"]  # those two are included
html_theme = "furo"
html_title = "pyrovae"
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks are rendered from their stored outputs
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
nitpicky = False


def _copy_notebooks() -> None:
    out = DOCS / "_generated" / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copyfile(path, out / path.name)


def _generate(app) -> None:
    write_generated(DOCS / "_generated")
    write_figures(ROOT, DOCS / "_generated" / "figures")
    _copy_notebooks()


def setup(app):
    app.connect("builder-inited", _generate)
