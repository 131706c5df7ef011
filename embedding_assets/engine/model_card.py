"""The model card: a markdown template filled from the provenance stored inside the model file.

Everything the card says is read from the model itself, so a card can be rebuilt from any
model file: `render(LexicalEmbedder.load(path))`.
"""

from __future__ import annotations

from string import Template

CARD = Template("""\
# Lexical-dense student `$version`

## Data
- training sample version `$sample_version`: $train_documents training, $heldout_documents held-out documents
- features version `$features_version`: $vocabulary n-grams of 1 to $max_n $front_end tokens
- teacher embeddings version `$teacher_embeddings_version`

## Teacher
- `$teacher_model` (weights and config sha256 `$teacher_sha256`), dim $teacher_dim, max_seq_length $teacher_max_seq_length, normalisation $teacher_normalization

## Architecture
- $dims: TF-IDF, sparse first layer, ReLU and L2 norm between layers, L2-normalised output
- first layer stored as $first_layer_dtype
- uint8 quantisation limit $quantization_limit

## Training
- $start, then Gram-matrix KL distillation (temperature $temperature) plus a cosine term (weight $cosine_weight), batch $batch_size, $epochs epochs ($steps steps), peak learning rate $learning_rate (warmup-stable-decay), seed $seed, on $device
- loss $loss_start at the start, $loss_end at the end

## Held-out fidelity to the teacher
$fidelity_table

## Linear-probe accuracy on labels
| teacher | student | TF-IDF |
|---|---|---|
| $probe_teacher | $probe_student | $probe_tfidf |

## Known limits
- Lexical: it sees token n-grams, not word order beyond $max_n tokens; paraphrases with no shared n-gram look unrelated.
- Texts with no known n-gram get one fallback vector (the mean training embedding).
- Fidelity was measured on held-out documents of the same corpus; other domains need their own check.
""")


def render(embedder) -> str:
    """The card of a trained `LexicalEmbedder`, from its provenance."""
    p = embedder.provenance
    training, evaluation, teacher = p.get("training", {}), p.get("evaluation", {}), p.get("teacher", {})
    versions, loss, probes = p.get("data_versions", {}), p.get("loss", {}), evaluation.get("probe_accuracy") or {}
    start = f"{training.get('init', 'random')} start"
    if training.get("init") == "ridge" and training.get("token_prior"):
        start += " toward the teacher token prior"
    return CARD.substitute(
        version=embedder.version,
        sample_version=versions.get("training_sample"),
        features_version=versions.get("features"),
        teacher_embeddings_version=versions.get("teacher_embeddings"),
        train_documents=training.get("train_documents"),
        heldout_documents=evaluation.get("heldout_documents"),
        vocabulary=f"{embedder.vocabulary.size:,}",
        max_n=embedder.vocabulary.max_n,
        front_end="WordPiece" if embedder.vocabulary.front_end == "wordpiece" else "word",
        teacher_model=teacher.get("model"),
        teacher_sha256=teacher.get("model_sha256"),
        teacher_dim=teacher.get("dim"),
        teacher_max_seq_length=teacher.get("max_seq_length"),
        teacher_normalization=teacher.get("normalization"),
        dims=" -> ".join(map(str, embedder.dims)),
        first_layer_dtype=embedder.first_layer_dtype,
        quantization_limit=f"{embedder.quantization_limit:.5f}",
        start=start,
        temperature=training.get("temperature"),
        cosine_weight=training.get("cosine_weight", 0),
        batch_size=training.get("batch_size"),
        epochs=training.get("epochs"),
        steps=training.get("steps"),
        learning_rate=training.get("learning_rate"),
        seed=training.get("seed"),
        device=training.get("device"),
        loss_start=loss.get("start"),
        loss_end=loss.get("end"),
        fidelity_table=fidelity_table(evaluation),
        probe_teacher=probes.get("teacher", "n/a"),
        probe_student=probes.get("student", "n/a"),
        probe_tfidf=probes.get("tfidf", "n/a"),
    )


def fidelity_table(evaluation: dict) -> str:
    student, untrained = evaluation.get("student", {}), evaluation.get("untrained_student", {})
    return "\n".join([
        "| model | recall@10 | Spearman |",
        "|---|---|---|",
        f"| student | {student.get('recall_at_10', 'n/a')} | {student.get('spearman', 'n/a')} |",
        f"| random init, untrained, same shape | {untrained.get('recall_at_10', 'n/a')} | {untrained.get('spearman', 'n/a')} |",
    ])


def evaluation_table(evaluation: dict) -> str:
    """Teacher, student, untrained student and plain TF-IDF side by side, for the run's metadata."""
    probes = evaluation.get("probe_accuracy") or {}
    student, untrained = evaluation.get("student", {}), evaluation.get("untrained_student", {})
    rows = [
        ("teacher", "1.0 (reference)", "1.0 (reference)", probes.get("teacher", "n/a")),
        ("student", student.get("recall_at_10", "n/a"), student.get("spearman", "n/a"), probes.get("student", "n/a")),
        ("random-init student, untrained", untrained.get("recall_at_10", "n/a"), untrained.get("spearman", "n/a"), "n/a"),
        ("plain TF-IDF", "n/a", "n/a", probes.get("tfidf", "n/a")),
    ]
    lines = ["| model | recall@10 vs teacher | Spearman vs teacher | probe accuracy |", "|---|---|---|---|"]
    lines += [f"| {name} | {r} | {s} | {p} |" for name, r, s, p in rows]
    return "\n".join(lines) + f"\n\nHeld-out documents: {evaluation.get('heldout_documents')}.\n"
