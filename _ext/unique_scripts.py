"""Write each inline <script> of a page once.

Sphinx 7.4 (the version Jupyter Book 1 uses) registers a script body added after the builder
starts (sphinx-togglebutton's and sphinx-thebe's configuration) a second time when it prepares
to write, under the file name ``''`` instead of ``None``. The copy redeclares a ``const`` and the
browser reports ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared`` on every
page. This extension drops such copies from each page's script list, keeping the first.
"""

from __future__ import annotations


def _drop_repeated_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        filename = getattr(script, "filename", script) or ""
        attributes = tuple(sorted(getattr(script, "attributes", {}).items()))
        key = (filename, attributes)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
