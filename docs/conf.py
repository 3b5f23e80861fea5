"""Sphinx configuration of xci-cn's documentation.

Built with warnings as errors by tests/test_docs.py (the same as
``.venv/bin/sphinx-build -W -b html docs build/docs``). No extension that
needs the network or a binary outside the virtualenv.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xci_cn import __version__

project = "xci-cn"
copyright = "xci-cn contributors, Apache-2.0"
version = release = __version__

root_doc = "index"
extensions: list[str] = []
exclude_patterns: list[str] = []
highlight_language = "none"
nitpicky = True

html_theme = "alabaster"
html_title = f"xci-cn {release}"
html_theme_options = {"description": "Continuous delivery for CN-VNFs on OPNFV XCI scenarios"}
