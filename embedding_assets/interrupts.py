"""Ctrl-C and SIGTERM stop a step at once: an interrupt is a person's or a scheduler's decision, not
a passing fault, so the steps' retry policies must not run the step again."""

import functools

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError

INTERRUPTED = "interrupted"


def stop_on_interrupt(compute):
    """Wraps an asset's function: an interrupt fails the step with allow_retries=False, marked `interrupted`."""

    @functools.wraps(compute)
    def step(*args, **kwargs):
        try:
            return compute(*args, **kwargs)
        except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
            raise dg.Failure(
                f"{compute.__name__} was interrupted (Ctrl-C or SIGTERM) and stopped, not retried; "
                "what it had stored stays, and the next run goes on from there",
                metadata={INTERRUPTED: True},
                allow_retries=False,
            ) from exc

    return step


def was_interrupted(result) -> bool:
    """Whether a run stopped because of an interrupt: a step marked `interrupted`, or the run canceled."""
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.RUN_CANCELED:
            return True
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data.user_failure_data
            if data is not None and INTERRUPTED in (data.metadata or {}):
                return True
    return False
