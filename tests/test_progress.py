"""Progress lines in the run log and throughput in the materialisation metadata of every stage."""

import mmap
import re
import time

import dagster as dg
import pyarrow.parquet as pq
import pytest

from embedding_assets.engine.tokenization import load_tokenizer
from embedding_assets.progress import PROGRESS_INTERVAL_SECONDS, ProgressLog, StepMemory, format_duration, status_mib, throughput, token_counts
from conftest import stored_file

STAGES = ["raw_corpus", "training_sample", "features", "teacher_embeddings", "distilled_model", "quality_classifier", "scored_corpus"]


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_first_then_at_most_once_per_interval_then_last():
    clock, lines = ManualClock(), []
    progress = ProgressLog(lines.append, "teacher", 1000, interval=10.0, clock=clock)
    logged = []
    for done in range(50, 1001, 50):
        clock.now += 2.0  # 25 documents/s
        logged.append(progress.update(done))
    # 20 updates over 40 s: the first, one per 10 s after it, and the last.
    assert logged.count(True) == 5 and logged[0] and logged[-1]
    assert lines[0] == "teacher: 50/1,000 documents (5%), 25.0 documents/s, ETA 38 s"
    assert lines[-1] == "teacher: 1,000/1,000 documents (100%), 25.0 documents/s, done"


def test_progress_detail_and_eta_in_minutes():
    clock, lines = ManualClock(), []
    progress = ProgressLog(lines.append, "training", 30, unit="epochs", clock=clock)
    clock.now += 12.0
    progress.update(2, "loss 0.1234")
    assert lines == ["training: 2/30 epochs (7%), 0.2 epochs/s, ETA 2 min 48 s; loss 0.1234"]
    assert format_duration(7322) == "2 h 02 min"


def test_throughput_names_and_rates():
    assert throughput(2.0, 100, 5000) == {"wall_seconds": 2.0, "docs_per_second": 50.0, "documents_processed": 100, "tokens_per_second": 2500.0}
    assert throughput(4.0, 10) == {"wall_seconds": 4.0, "docs_per_second": 2.5, "documents_processed": 10}


def touched(mib: int) -> mmap.mmap:
    """`mib` MiB really resident: a mapping of its own, every page written, so it is resident
    whatever the allocator holds, and `close()` gives it back to the system at once."""
    block = mmap.mmap(-1, mib << 20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    return block


def test_a_steps_peak_memory_is_its_own_not_the_peak_an_earlier_step_left_in_the_process():
    earlier = touched(300)
    process_peak = status_mib("VmHWM")
    earlier.close()
    memory = StepMemory.start()
    step = touched(60)
    reached = status_mib("VmRSS")
    step.close()
    report = memory.report()
    assert report["peak_rss_method"].startswith("kernel high-water mark")  # /proc/self/clear_refs is writable here
    assert report["peak_rss_mib"] >= reached - 1
    assert report["peak_rss_mib"] < process_peak - 150  # never the 300 MiB of before
    assert report["step_added_rss_mib"] == pytest.approx(max(report["peak_rss_mib"] - report["rss_at_step_start_mib"], 0), abs=0.2)


def test_where_the_high_water_mark_cannot_be_reset_the_step_samples_its_memory(monkeypatch, tmp_path):
    monkeypatch.setattr(StepMemory, "CLEAR_REFS", str(tmp_path / "absent" / "clear_refs"))
    memory = StepMemory.start()
    step = touched(80)
    reached = status_mib("VmRSS")
    time.sleep(0.2)
    step.close()
    after = status_mib("VmRSS")
    report = memory.report()
    assert report["peak_rss_method"].startswith("VmRSS sampled")
    # The block is gone when the report is made: only the sampler can have seen the peak.
    assert reached - after >= 75
    assert report["peak_rss_mib"] >= reached - 1


def latest(instance, key, partition=None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def test_every_stage_reports_wall_time_and_docs_and_tokens_per_second(pipeline):
    instance = pipeline["instance"]
    shard = sorted(pipeline["ids"])[0]
    for stage in STAGES:
        meta = latest(instance, stage, shard if stage in ("raw_corpus", "scored_corpus") else None)
        assert meta["wall_seconds"] > 0, stage
        assert meta["docs_per_second"] > 0 and meta["tokens_per_second"] > meta["docs_per_second"], stage


def test_features_count_tokens_exactly_and_ingest_estimates_them_from_characters(pipeline, tokenizer_json):
    tokenizer = load_tokenizer(tokenizer_json)
    instance, storage = pipeline["instance"], pipeline["storage"]
    for shard in pipeline["ids"]:
        texts = pq.read_table(stored_file(storage, "raw_corpus", shard))["text"].to_pylist()
        meta = latest(instance, "raw_corpus", shard)
        exact = sum(len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts)
        assert meta["characters"] == sum(len(t) for t in texts)
        assert meta["tokens_estimate"] == pytest.approx(exact, rel=0.15), shard
    # The sample is tokenised by features anyway: its counts there are exact.
    sample = pq.read_table(stored_file(storage, "training_sample.parquet"))
    counts = token_counts(tokenizer, sample["text"].to_pylist())
    meta = latest(instance, "features")
    assert meta["tokens"] == counts.sum()
    assert meta["train_tokens"] == counts[[s == "train" for s in sample["split"].to_pylist()]].sum()
    scored = latest(instance, "scored_corpus", "stdlib-docs-00")
    raw = latest(instance, "raw_corpus", "stdlib-docs-00")
    # Scoring reads the shard's token estimate from its ingest rather than tokenising twice.
    assert scored["tokens_per_second"] / scored["docs_per_second"] == pytest.approx(raw["tokens_estimate"] / raw["dagster/row_count"], rel=0.01)


PROGRESS_LINE = re.compile(r"^(teacher|training|scoring \S+): ([\d,]+)/([\d,]+) (documents|epochs) \(\d+%\), [\d,.]+ \4/s, (ETA .+|done)")


@pytest.mark.parametrize("what", ["teacher", "training", "scoring stdlib-docs-00"])
def test_long_work_logs_progress_without_flooding(pipeline, what):
    instance = pipeline["instance"]
    lines = []
    for result in pipeline["results"]:
        for entry in instance.all_logs(result.run_id):
            match = PROGRESS_LINE.match(entry.user_message)
            if match and match.group(1) == what:
                lines.append((entry.timestamp, match))
    assert lines, f"no progress line from {what}"
    first, last = lines[0][0], lines[-1][0]
    assert len(lines) <= 2 + (last - first) / PROGRESS_INTERVAL_SECONDS
    done, total = (int(x.replace(",", "")) for x in lines[-1][1].group(2, 3))
    assert done == total and lines[-1][1].group(5) == "done"
