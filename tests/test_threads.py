"""Threads are sized from the cgroup CPU quota (a pod's limit), not only from the cores the process sees."""

import os

from embedding_assets.engine.threads import available_cpus, cgroup_cpu_limit


def cores() -> int:
    return len(os.sched_getaffinity(0))


def test_cgroup_v2_quota_caps_the_threads(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert available_cpus(tmp_path) == min(cores(), 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1


def test_cgroup_v2_without_a_limit_uses_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cpus(tmp_path) == cores()


def test_cgroup_v1_quota_and_period(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.0
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "missing") is None
    assert available_cpus(tmp_path / "missing") == cores()
