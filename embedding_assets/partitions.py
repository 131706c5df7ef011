import dagster as dg

# One partition per corpus shard file; shards keep arriving, so the set is dynamic.
corpus_shards = dg.DynamicPartitionsDefinition(name="corpus_shards")
