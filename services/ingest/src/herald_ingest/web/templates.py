"""The status page template (autoescaped: no case text is ever trusted as markup)."""

from __future__ import annotations

from importlib.resources import files

from jinja2 import Environment, select_autoescape

_env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
status_template = _env.from_string(files(__package__).joinpath("status.html").read_text("utf-8"))
# A refused link or answer, for a browser (API clients get problem+json).
message_template = _env.from_string(files(__package__).joinpath("message.html").read_text("utf-8"))
