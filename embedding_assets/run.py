"""Materialise the whole graph on a corpus: every shard, then training, then every shard scored.

    python -m embedding_assets.run [--corpus DIR_OR_S3] [--storage DIR_OR_S3] [--sample-size N]

Shards found in the corpus become partitions of the Dagster instance in DAGSTER_HOME (an
ephemeral one if it is unset), and each job runs through Dagster, so `dagster dev` shows the
runs, metadata and lineage afterwards.
"""

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Materialise every asset of embedding_assets on a corpus.")
    parser.add_argument("--corpus", help="corpus directory or s3:// prefix (default: the built-in sample)")
    parser.add_argument("--storage", help="output directory or s3:// prefix (default: data/storage)")
    parser.add_argument("--sample-size", type=int, help="documents in the training sample")
    parser.add_argument("--epochs", type=int, help="training epochs")
    args = parser.parse_args(argv)
    if args.corpus:
        os.environ["EMBEDDING_ASSETS_CORPUS"] = args.corpus
    if args.storage:
        os.environ["EMBEDDING_ASSETS_STORAGE"] = args.storage

    import dagster as dg

    from embedding_assets.definitions import defs
    from embedding_assets.jobs import PIPELINE
    from embedding_assets.partitions import corpus_shards

    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    shards = sorted(defs.resources["corpus"].shards())
    if not shards:
        print(f"no shard files under {defs.resources['corpus'].location}", file=sys.stderr)
        return 1
    known = set(instance.get_dynamic_partitions(corpus_shards.name))
    instance.add_dynamic_partitions(corpus_shards.name, [s for s in shards if s not in known])

    ops: dict = {}
    if args.sample_size:
        ops["training_sample"] = {"config": {"size": args.sample_size}}
    if args.epochs is not None:
        ops["distilled_model"] = {"config": {"epochs": args.epochs}}

    started = time.perf_counter()
    for job in PIPELINE:
        job_def = defs.resolve_job_def(job.name)
        partitions = shards if job_def.partitions_def is not None else [None]
        for shard in partitions:
            label = f"{job.name}[{shard}]" if shard else job.name
            result = job_def.execute_in_process(
                instance=instance,
                partition_key=shard,
                run_config={"ops": {k: v for k, v in ops.items() if k in {n.name for n in job_def.nodes}}},
                raise_on_error=False,
            )
            print(f"{label}: {'success' if result.success else 'FAILED'} (run {result.run_id})", flush=True)
            if not result.success:
                return 1
    print(f"materialised {len(shards)} shards end to end in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
