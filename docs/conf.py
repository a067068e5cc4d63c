"""Sphinx configuration of the shtopk documentation (built with warnings as errors in CI)."""

from __future__ import annotations

import shtopk

project = "shtopk"
author = "the shtopk developers"
copyright = "2026, the shtopk developers"
release = version = shtopk.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "scripts", "README*"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_typehints = "none"  # the numpydoc sections document the types
numpydoc_show_class_members = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = "shtopk"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
templates_path = ["_templates"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    # one header row at 1280 px: five links, the rest under "More", and a search button, not a field
    "header_links_before_dropdown": 5,
    "navbar_persistent": [],
    "navbar_end": ["search-button", "theme-switcher", "navbar-icon-links"],
    # the API pages hold one object each: no "On this page" column, more room for the code
    "secondary_sidebar_items": {
        "[!a]*": ["page-toc", "sourcelink"],
        "api": ["page-toc", "sourcelink"],
        "api/generated/*": ["sourcelink"],
    },
}
# No left sidebar on the top-level pages, which have no sub-pages (wider content, code without
# scrolling); the API pages (api, api/generated/*) keep it to list the functions and classes.
html_sidebars = {"[!a]*": []}
