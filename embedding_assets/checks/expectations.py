"""Running a great-expectations suite on an in-memory table and turning it into a check result.

great-expectations is imported here, lazily, so loading the code location stays fast.
"""

from collections.abc import Callable

import dagster as dg
import pandas as pd

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
    """Validate `frame` against the expectations `build(gxe)` returns; failures list their offending values."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=suite_name, expectations=build(gxe))
    batch = _gx_context().data_sources.get("checks").get_asset("table").get_batch_definition("whole")
    result = batch.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format="SUMMARY")
    metadata: dict = {"rows": len(frame)}
    failed = []
    for r in result.results:
        config = r.expectation_config
        name = config.type + (f"[{config.kwargs['column']}]" if "column" in config.kwargs else "")
        observed = r.result.get("observed_value", r.result.get("unexpected_count"))
        metadata[name] = observed if isinstance(observed, (int, float, str)) else str(observed)
        if not r.success:
            failed.append(name)
            if r.result.get("partial_unexpected_list"):
                metadata[f"{name} examples"] = [str(v) for v in r.result["partial_unexpected_list"][:ids_cap]]
    metadata["failed_expectations"] = failed
    metadata.update(extra_metadata or {})
    return dg.AssetCheckResult(passed=bool(result.success), metadata=metadata)
