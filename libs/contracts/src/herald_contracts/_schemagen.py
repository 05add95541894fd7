"""Write JSON Schemas and the AsyncAPI document from the models (`make schemas`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from herald_contracts._registry import ALL_EVENT_TYPES, EventType
from herald_contracts._topics import Topics


def event_schema(et: EventType) -> dict[str, Any]:
    """The JSON Schema of one event type's data."""
    schema = et.model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = et.dataschema
    schema["title"] = f"{et.type} v{et.version}"
    return schema


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document: one channel per topic, one message per event type."""
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic in Topics.all():
        types = [et for et in ALL_EVENT_TYPES if et.topic == topic]
        channel_messages = {}
        for et in types:
            mid = et.type.replace(".", "_")
            messages[mid] = {
                "name": et.type,
                "contentType": "application/json",
                "description": (et.model.__doc__ or "").strip(),
                "headers": {"$ref": "#/components/schemas/CloudEventsBinaryHeaders"},
                "payload": {"$ref": f"events/{et.schema_name}"},
            }
            channel_messages[mid] = {"$ref": f"#/components/messages/{mid}"}
        channels[topic.base.replace(".", "_")] = {
            "address": topic.base,
            "description": topic.description,
            "messages": channel_messages,
            "bindings": {
                "kafka": {
                    "partitions": topic.partitions,
                    "topicConfiguration": {
                        "cleanup.policy": [topic.cleanup.value],
                        **(
                            {"retention.ms": topic.retention_ms}
                            if topic.retention_ms is not None
                            else {}
                        ),
                    },
                }
            },
            "x-key": topic.key,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Herald events",
            "version": "1.0.0",
            "description": "CloudEvents 1.0 in Kafka binary mode (ce_* headers, JSON body) "
            "plus a W3C traceparent header.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {
            "messages": messages,
            "schemas": {
                "CloudEventsBinaryHeaders": {
                    "type": "object",
                    "required": ["ce_specversion", "ce_id", "ce_source", "ce_type"],
                    "properties": {
                        "ce_specversion": {"type": "string", "const": "1.0"},
                        "ce_id": {"type": "string"},
                        "ce_source": {"type": "string"},
                        "ce_type": {"type": "string"},
                        "ce_time": {"type": "string", "format": "date-time"},
                        "ce_subject": {"type": "string"},
                        "ce_dataschema": {"type": "string"},
                        "content-type": {"type": "string"},
                        "traceparent": {"type": "string"},
                    },
                }
            },
        },
    }


def render_all() -> dict[str, str]:
    """Every generated file, relative to schemas/, with its text."""
    files = {
        f"events/{et.schema_name}": json.dumps(event_schema(et), indent=2, sort_keys=True) + "\n"
        for et in ALL_EVENT_TYPES
    }
    files["asyncapi.yaml"] = yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True)
    return files


def write(root: Path, files: dict[str, str]) -> None:
    """Write files under root, removing stale generated ones in the same folders."""
    for sub in {Path(p).parent for p in files}:
        folder = root / sub
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.json"):
            if str(old.relative_to(root)) not in files:
                old.unlink()
    for rel, text in files.items():
        (root / rel).write_text(text, encoding="utf-8")


def main() -> None:
    """CLI: herald-schemas [OUT_DIR]."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="schemas", type=Path)
    args = parser.parse_args()
    write(args.out, render_all())
