"""Sphinx configuration for the aiosmtpd documentation.

Every example in these pages is a doctest: ``sphinx-build -b doctest`` runs
them (tests/test_docs.py does so as part of the test suite).
"""

from __future__ import annotations

import os
import sys

# Document the checkout this file lives in, not some other installed copy.
sys.path.insert(0, os.path.abspath(".."))

from aiosmtpd import __version__  # noqa: E402

project = "aiosmtpd"
author = "The aiosmtpd Developers"
copyright = "The aiosmtpd Developers"
version = __version__
release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
]
# No intersphinx: builds must work without network access.

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
language = "en"
pygments_style = "sphinx"

autodoc_member_order = "bysource"
autodoc_typehints = "description"

# Examples in the pages talk to real servers on loopback; these names are
# available in every doctest so the examples can stay short.
doctest_global_setup = """
import asyncio
import smtplib
"""
# Plain ``>>>`` paragraphs are tested as well as ``.. doctest::`` blocks.
doctest_test_doctest_blocks = "default"

html_theme = "alabaster"
html_title = f"aiosmtpd {release}"
