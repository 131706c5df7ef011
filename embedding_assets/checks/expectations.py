"""Running a great-expectations suite on an in-memory table and turning it into a check result.

great-expectations is imported here, lazily, so loading the code location stays fast.
"""

from collections.abc import Callable

import dagster as dg
import pandas as pd

from embedding_assets.checks.reasons import bounds_table

_context = None


def _gx_context():
    global _context
    if _context is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _context = gx.get_context(mode="ephemeral")
        _context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = _context.data_sources.add_pandas("checks")
        source.add_dataframe_asset("table").add_batch_definition_whole_dataframe("whole")
    return _context


def validate(
    frame: pd.DataFrame,
    suite_name: str,
    build: Callable[[object], list],
    extra_metadata: dict | None = None,
    ids_cap: int = 20,
) -> dg.AssetCheckResult:
    """Validate `frame` against the expectations `build(gxe)` returns: a table of every expectation with
    what it found beside its bound, and on failure what failed and the offending values."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=suite_name, expectations=build(gxe))
    batch = _gx_context().data_sources.get("checks").get_asset("table").get_batch_definition("whole")
    result = batch.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format="SUMMARY")
    metadata: dict = {"rows": len(frame)}
    rows, failed = [], []
    for r in result.results:
        config = r.expectation_config
        column = config.kwargs.get("column")
        name = config.type + (f"[{column}]" if column else "")
        observed, bound = observed_value(r.result), expected_bound(config.kwargs)
        if "observed_value" not in r.result and bound != "every row":
            bound = f"every row {bound}"  # a per-row expectation: its observed value counts the rows that fail
        rows.append((name, observed, bound, r.success))
        if not r.success:
            failed.append(f"{name}: {observed}; expected {bound}")
            if r.result.get("partial_unexpected_list"):
                metadata[f"{name} examples"] = [str(v) for v in r.result["partial_unexpected_list"][:ids_cap]]
    metadata["expectations"] = bounds_table(rows)
    if failed:
        metadata["failed_expectations"] = failed
    metadata.update(extra_metadata or {})
    return dg.AssetCheckResult(passed=bool(result.success), metadata=metadata)


def observed_value(result: dict) -> str:
    """What an expectation found: the value of a table or column aggregate, else how many rows fail."""
    if "observed_value" in result:
        value = result["observed_value"]
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    if "unexpected_count" in result:
        return f"{result['unexpected_count']:,} of {result.get('element_count', 0):,} rows fail"
    return "n/a"


def number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}" if isinstance(value, float) else str(value)


def expected_bound(kwargs: dict) -> str:
    """An expectation's bound in words, from its arguments."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if "value" in kwargs and kwargs["value"] is not None:
        return f"= {number(kwargs['value'])}"
    if "value_set" in kwargs and kwargs["value_set"] is not None:
        return f"in {sorted(kwargs['value_set'])}"
    if low is not None or high is not None:
        left = f"{'>' if kwargs.get('strict_min') else '>='} {number(low)}" if low is not None else ""
        right = f"{'<' if kwargs.get('strict_max') else '<='} {number(high)}" if high is not None else ""
        return " and ".join(part for part in (left, right) if part)
    return "every row"
