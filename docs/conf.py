"""Sphinx configuration for the aiozcrx documentation.

Build: ``python -m sphinx -W --keep-going -b html docs build/docs`` (``make docs``).

Why Sphinx (with myst-parser and the furo theme) rather than mkdocs:

- autodoc reads the docstrings the package already has (Receiver, ZcrxTransport,
  create_server, ...), so the API reference is generated from the code, not copied.
- ``-W`` (warnings are errors) is a first-class sphinx-build flag: a broken
  cross-reference, a page left out of the toctree or a docstring that does not
  parse fails the build; ``tests/test_docs.py`` runs exactly that.
- myst-parser keeps every page Markdown (the docs already are), with directives
  (toctree, autodoc, literalinclude) where needed.
- mkdocs would need mkdocstrings (a plugin with its own handler configuration) for
  the API reference and a second config language (YAML) next to pyproject.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # document the checkout (autodoc imports aiozcrx)

project = "aiozcrx"
author = "aiozcrx contributors"
copyright = "2026, aiozcrx contributors"

try:
    from aiozcrx import __version__ as release
except Exception:  # pragma: no cover - the build then fails on autodoc anyway
    release = "0.1.0"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown: `[text](page.md)` links between pages become cross-references; heading
# anchors let `[text](page.md#heading)` work too.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc: members in source order; signatures and type hints as written.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

# Links into the Python docs for asyncio.Protocol, memoryview, OSError, ...
# (offline builds: the inventory fetch fails with a warning; see tests/test_docs.py)
intersphinx_mapping = {}
if os.environ.get("AIOZCRX_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping["python"] = ("https://docs.python.org/3", None)

html_theme = "furo"
html_title = f"aiozcrx {release}"


# Docstring fixes applied at build time until the source is fixed (each a no-op once
# it is). aiozcrx/anyio/_streams.py ZcrxListener: ``ZcrxStream``s is not valid reST (an inline
# literal must not be followed by a letter); the source fix is ``ZcrxStream`` objects.
_DOCSTRING_FIXES = {
    "aiozcrx.anyio.ZcrxListener": [("``ZcrxStream``s", "``ZcrxStream`` objects")],
}


def _fix_docstring(app, what, name, obj, options, lines):
    for old, new in _DOCSTRING_FIXES.get(name, ()):
        lines[:] = [line.replace(old, new) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _fix_docstring)
