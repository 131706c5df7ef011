"""Wall time of every step of the latest pipeline runs in a Dagster instance, and the share spent in checks.

    DAGSTER_HOME=.dagster_home python -m bench.stage_times [--runs N]

Reads STEP_START / STEP_SUCCESS events from the instance's event log: the same records the UI
shows, so the figures are those of a real `make run`.
"""

import argparse
from collections import defaultdict

import dagster as dg
from dagster._core.events import DagsterEventType

CHECK_NAMES = (
    "raw_corpus_contract", "corpus_ids_unique_across_shards", "features_vocabulary", "features_coverage",
    "teacher_embeddings_valid", "distilled_model_fidelity", "distilled_model_artifact",
    "quality_classifier_calibration", "scored_corpus_contract", "scored_corpus_drift",
)


def step_times(instance: dg.DagsterInstance, runs: int) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for record in instance.get_run_records(limit=runs):
        started: dict[str, float] = {}
        for entry in instance.all_logs(record.dagster_run.run_id):
            event = entry.dagster_event
            if event is None or entry.step_key is None:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                started[entry.step_key] = entry.timestamp
            elif event.event_type == DagsterEventType.STEP_SUCCESS and entry.step_key in started:
                totals[entry.step_key] += entry.timestamp - started[entry.step_key]
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="how many of the latest runs to read (make run on 4 shards makes 9)")
    args = parser.parse_args()
    totals = step_times(dg.DagsterInstance.get(), args.runs)
    check_time = sum(t for step, t in totals.items() if step.endswith(CHECK_NAMES))
    total = sum(totals.values())
    for step, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{step:60s} {seconds:8.2f} s")
    print(f"{'all steps':60s} {total:8.2f} s")
    print(f"{'checks':60s} {check_time:8.2f} s  ({check_time / total:.1%} of step time)")


if __name__ == "__main__":
    main()
