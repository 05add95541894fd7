"""Write each service's OpenAPI document into schemas/openapi/ (`make schemas`)."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from herald_devstack._services import SERVICES


def openapi_documents() -> dict[str, dict[str, Any]]:
    """Service name → its OpenAPI document, built without connecting anywhere."""
    docs = {}
    for spec in SERVICES:
        app_mod = importlib.import_module(f"{spec.module}.app")
        cfg_mod = importlib.import_module(f"{spec.module}.config")
        app = app_mod.create_app(cfg_mod.Settings(_env_file=None))
        docs[spec.name] = app.openapi()
    return docs


def render_all() -> dict[str, str]:
    """openapi/<service>.json → text."""
    return {
        f"openapi/{name}.json": json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, doc in openapi_documents().items()
    }


def main() -> None:
    """CLI: herald-openapi [OUT_DIR]."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="schemas", type=Path)
    args = parser.parse_args()
    for rel, text in render_all().items():
        path = args.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
