"""The assets: one module per stage."""

import warnings

import dagster as dg

# scored_corpus's BackfillPolicy (several shards per run) is a beta parameter in Dagster 1.13.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
