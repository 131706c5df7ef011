import numpy as np, pyarrow.parquet as pq, pyarrow as pa
from sklearn.metrics import average_precision_score
from conftest import stored_file
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.engine.curation import cross_fitted_head, linear_head, lexical_features, blended_logistic, folds_of, document_keys, fit_logistic
from embedding_assets.sample_corpus import NETWORKING_LABELS, SAMPLE_REFERENCE_DIR


def test_debug(pipeline):
    st = pipeline["storage"]
    emb = LexicalEmbedder.from_bytes(stored_file(st, "distilled_model.safetensors").read_bytes())
    sample = pq.read_table(stored_file(st, "training_sample.parquet")).to_pydict()
    refs = pa.concat_tables([pq.read_table(p) for p in sorted(SAMPLE_REFERENCE_DIR.glob("*.parquet"))]).to_pydict()
    corpus_ids, corpus_texts, labels = [], [], []
    for shard in ["lines", "notes", "stdlib-docs-00", "stdlib-docs-01", "stdlib-docs-02"]:
        t = pq.read_table(stored_file(st, "raw_corpus", shard)).to_pydict()
        corpus_ids += t["id"]; corpus_texts += t["text"]; labels += t.get("label", [None] * len(t["id"]))
    y_true = np.array([l in NETWORKING_LABELS for l in labels])
    train = [i for i, s in enumerate(sample["split"]) if s == "train"]
    neg_texts = [sample["text"][i] for i in train]; neg_ids = [sample["id"][i] for i in train]
    rt = refs["text"]
    texts = rt + neg_texts
    y = np.r_[np.ones(len(rt), bool), np.zeros(len(neg_texts), bool)]
    ids = [f"reference:{i}" for i in refs["id"]] + neg_ids
    inc = np.r_[np.zeros(len(rt), bool), np.ones(len(neg_texts), bool)]
    E, L = emb.encode(texts), lexical_features(emb, texts)
    print("\nrefs", len(rt), "negs", len(neg_texts), "corpus", len(corpus_ids), "base", y_true.mean())
    old = linear_head("reference-classifier", "logistic", emb.version, {"c": 1.0}, E, y, L)
    print("old in-sample scoring AP", average_precision_score(y_true, old.score_texts(emb, corpus_texts)[1]))
    new = cross_fitted_head("reference-classifier", "logistic", emb.version, {"c": 1.0}, E, y, L, ids, inc)
    print("new settings", new.settings, new.evaluation)
    print("new score_documents AP", average_precision_score(y_true, new.score_documents(emb, corpus_ids, corpus_texts)[1]))
    print("new full-head AP", average_precision_score(y_true, new.score_texts(emb, corpus_texts)[1]))
    CE, CL = emb.encode(corpus_texts), lexical_features(emb, corpus_texts)
    for c in (0.3, 1, 3, 30):
        cd, bd = fit_logistic(E, y, c); cl, bl = fit_logistic(L, y, c)
        print("C", c, "dense AP", average_precision_score(y_true, CE @ cd), "lex AP", average_precision_score(y_true, CL @ cl), "sum", average_precision_score(y_true, CE @ cd + CL @ cl))
