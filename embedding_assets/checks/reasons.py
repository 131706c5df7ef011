"""Why a gate failed, in one line: what failed with its observed value, and the offending ids or shards."""

from collections.abc import Mapping

LIST_KEYS = ("failed", "failed_expectations")


def failure_reason(check_name: str, metadata: Mapping) -> str:
    values = {key: getattr(value, "value", value) for key, value in metadata.items()}
    parts = []
    for name in values.get("failed") or values.get("failed_expectations") or []:
        parts.append(f"{name} (observed {values[name]})" if name in values else str(name))
    for key, value in values.items():
        if isinstance(value, list) and value and key not in LIST_KEYS:
            parts.append(f"{key} {value}")
    return f"{check_name} failed: " + ("; ".join(parts) or "see its metadata")
