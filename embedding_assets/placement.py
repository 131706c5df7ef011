"""Where the GPU-bound assets run: a concurrency pool on one machine, a GPU pod on Kubernetes.

The pool name only takes effect with an instance limit (`dagster instance concurrency set gpu 1`);
the `dagster-k8s/config` tag is read by dagster-k8s's executor and ignored by the others.
"""

GPU_POOL = "gpu"

GPU_POD_TAGS = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "24Gi", "nvidia.com/gpu": "1"},
            }
        },
        "pod_spec_config": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
}

# Scoring a shard streams record batches, so a small pod per shard is enough.
SHARD_POD_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}},
    }
}
