"""Why a gate failed, in one line: what failed with its observed value, and the offending ids or shards."""

from collections.abc import Mapping

import dagster as dg

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


def failed_entry(failed: list[str]) -> dict:
    """A check's `failed` entry: what failed, present only when something did."""
    return {"failed": failed} if failed else {}


BOUNDS_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("measure", "string", "what the check measures, with its unit"),
    dg.TableColumn("observed", "string", "the value found"),
    dg.TableColumn("bound", "string", "what it must be, and the setting that says so"),
    dg.TableColumn("passed", "bool", "whether the observed value is within the bound"),
])


def bounds_table(rows: list[tuple[str, object, str, bool]]):
    """Each measure a check judges, its observed value beside its bound: (measure, observed, bound, passed)."""
    return dg.MetadataValue.table(
        [dg.TableRecord({"measure": m, "observed": str(o), "bound": b, "passed": bool(p)}) for m, o, b, p in rows], schema=BOUNDS_SCHEMA
    )
