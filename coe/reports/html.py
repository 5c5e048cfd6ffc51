"""HTML pages from Jinja templates: every value is escaped on the way in (autoescape), data handed
to scripts is JSON that cannot end a <script> element, and a Content-Security-Policy lets only the
page's own scripts run, so text from files, paths and models can never become markup or code."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import math
import os
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from coe.core.names import readable

ASSETS = files("coe.reports") / "templates"
# What JSON may hold that HTML or a JS source could read as something else.
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(value: Any) -> str:
    """`value` as JSON that is safe inside a <script> element or a .js file: NaN and infinities
    become null (JSON has neither), text is valid Unicode (file names that are not UTF-8 spelled
    readably), and <, >, & and the JS line separators are \\u escapes."""
    text = json.dumps(_writable(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for character, escape in _SCRIPT_UNSAFE.items():
        text = text.replace(character, escape)
    return text


def _writable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, dict):
        return {_writable(key): _writable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_writable(item) for item in value]
    return value


@cache
def asset(name: str) -> str:
    """A CSS or JS file shipped with the templates, to be inlined in a page."""
    return (ASSETS / name).read_text(encoding="utf-8")


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def content_security_policy(scripts: list[str], styles: list[str]) -> str:
    """Only these inline scripts and styles (by hash), scripts and images from the report's own
    folder, nothing from the network, no forms, no plugins."""
    script_sources = " ".join(["'self'", *map(_csp_hash, scripts)])
    style_sources = " ".join(map(_csp_hash, styles))
    return (
        f"default-src 'none'; script-src {script_sources}; style-src {style_sources}; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'"
    )


@cache
def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("coe.reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["script_json"] = lambda value: Markup(script_json(value))
    return environment


def render_page(template: str, *, scripts: list[str] = (), styles: list[str] = ("report.css",), **context: Any) -> str:
    """Render `template` with the named assets inlined (and allowed by the page's CSP)."""
    script_text = [asset(name) for name in scripts]
    style_text = [asset(name) for name in styles]
    return _environment().get_template(template).render(
        inline_scripts=[Markup(text) for text in script_text],
        inline_styles=[Markup(text) for text in style_text],
        csp=content_security_policy(script_text, style_text),
        coe_version=importlib.metadata.version("coe"),
        made_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **context,
    )


def write_text_atomically(path: Path, text: str) -> Path:
    """Write beside, then rename: a browser or a reader never sees half a page. A file name that is
    not UTF-8 (in a title, say) is spelled readably rather than failing the page."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(readable(text), encoding="utf-8")
    os.replace(partial, path)
    return path
