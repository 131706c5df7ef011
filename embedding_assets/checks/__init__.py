"""The gates: one module of asset checks per stage."""

import warnings

import dagster as dg

# Per-shard checks (partitions_def on an asset check) are how the UI shows each shard's status.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)
