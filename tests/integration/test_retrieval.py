"""Embeddings, the Milvus Lite example store, kNN few-shot retrieval and the Ray Data index build."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clinray.prompting.knn_fewshot import knn_examples
from clinray.retrieval.embed import EmbedConfig, Embedder, embedding_text
from clinray.retrieval.milvus_store import MilvusExampleStore, MilvusRetriever, StoreConfig

OPTIONS = ("First option", "Second option", "Third option", "Fourth option")
#: (original, paraphrase) pairs on unrelated topics: each paraphrase's nearest neighbour is its original.
PLANTED = [
    (
        "Which vaccine prevents measles in young children?",
        "What immunization protects toddlers against measles?",
    ),
    ("How is a fractured femur stabilized in surgery?", "What operation fixes a broken thigh bone?"),
    ("Which insulin regimen suits type 1 diabetes?", "What insulin schedule is used for type one diabetes?"),
    (
        "What causes iron deficiency anemia in pregnancy?",
        "Why do pregnant women become anemic from low iron?",
    ),
    ("Which antibiotic treats streptococcal sore throat?", "What antibiotic is given for strep throat?"),
    ("How does asthma narrow the airways?", "By what mechanism do asthmatic airways constrict?"),
    ("What is the first aid for a severe burn?", "How should a serious burn injury be treated immediately?"),
    ("Which test detects colon cancer early?", "What screening finds bowel cancer at an early stage?"),
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(EmbedConfig())


@pytest.fixture(scope="module")
def planted_store(embedder, tmp_path_factory):
    store = MilvusExampleStore(
        StoreConfig(uri=str(tmp_path_factory.mktemp("milvus") / "planted.db"), index_type="FLAT")
    )
    store.ensure_collection()
    rows = []
    for i, pair in enumerate(PLANTED):
        for j, question in enumerate(pair):
            rows.append(
                {
                    "id": f"t{i}-{j}",
                    "question": question,
                    "options": list(OPTIONS),
                    "answer_index": i % 4,
                    "explanation": f"Reasoning {i}.",
                    "source": "planted",
                }
            )
    vectors = embedder.embed([embedding_text(r["question"], r["options"]) for r in rows])
    store.upsert([{**r, "vector": v} for r, v in zip(rows, vectors)])
    yield store
    store.close()


def test_embedder_is_offline_minilm_and_normalized(embedder):
    vectors = embedder.embed(["chest pain", "a broken arm"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert embedder.embed([]).shape == (0, 384)


def test_knn_search_finds_planted_neighbours_and_never_the_question(planted_store, embedder):
    assert planted_store.count() == 2 * len(PLANTED)
    retriever = MilvusRetriever(planted_store, embedder)
    for i, (original, paraphrase) in enumerate(PLANTED):
        hits = retriever.search(paraphrase, OPTIONS, k=3, exclude_ids=[f"t{i}-1"])
        assert hits[0][0].id == f"t{i}-0", (paraphrase, [h[0].question for h in hits])
        assert all(ex.id != f"t{i}-1" for ex, _ in hits)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        shots = knn_examples(original, OPTIONS, retriever=retriever, k=4, question_id=f"t{i}-0")
        assert len(shots) == 4 and f"t{i}-0" not in {ex.id for ex in shots}
        assert shots[-1].id == f"t{i}-1"  # the most similar example goes last
        assert shots[-1].explanation == f"Reasoning {i}." and shots[-1].options == OPTIONS


def test_store_rejects_mismatched_dimensions(planted_store, embedder):
    with pytest.raises(ValueError, match="store.dim"):
        planted_store.upsert(
            [{"id": "x", "vector": [0.1, 0.2], "question": "q", "options": ["a", "b"], "answer_index": 0}]
        )
    other = MilvusExampleStore(StoreConfig(uri=planted_store.cfg.uri, dim=8))
    with pytest.raises(ValueError, match="384-dim"):
        other.ensure_collection()
    with pytest.raises(ValueError, match=r"\.db"):
        StoreConfig(uri="runs/index/store.sqlite")


def _write_inputs(root):
    medqa = root / "medqa"
    medqa.mkdir()
    lines = []
    for i, (question, _) in enumerate(PLANTED):
        lines.append(
            json.dumps(
                {
                    "id": f"mq{i}",
                    "question": question,
                    "answer_idx": "ABCD"[i % 4],
                    "options": dict(zip("ABCD", OPTIONS)),
                }
            )
        )
    lines.append("{not json")
    lines.append(
        json.dumps({"id": "mq-bad", "question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "E"})
    )
    (medqa / "train.jsonl").write_text("\n".join(lines) + "\n")
    sft = []
    for i in range(len(PLANTED)):
        final = OPTIONS[i % 4] if i != 7 else OPTIONS[(i + 1) % 4]  # mq7's CoT reaches a wrong answer
        sft.append(
            json.dumps(
                {
                    "id": f"sft-mq{i}",
                    "assistant": f"Let's think step-by-step. Because {i}. "
                    f"Therefore, the correct answer is: {final}",
                    "has_cot": True,
                }
            )
        )
    (root / "sft.jsonl").write_text("\n".join(sft) + "\n")
    mcq = root / "medmcqa"
    mcq.mkdir()
    (mcq / "train.json").write_text(
        json.dumps(
            {
                "id": "mm0",
                "question": PLANTED[0][1],
                "opa": "w",
                "opb": "x",
                "opc": "y",
                "opd": "z",
                "cop": 3,
                "exp": "Because y.",
            }
        )
        + "\n"
    )


def test_index_build_counts_rejects_and_rebuild_is_idempotent(ray_local, tmp_path):
    from clinray.config import load
    from clinray.retrieval.build_index import IndexConfig, build_index

    _write_inputs(tmp_path)
    overrides = {
        "world": "",
        "inputs": [
            {"path": str(tmp_path / "medqa/train.jsonl")},
            {"path": str(tmp_path / "medmcqa/train.json")},
        ],
        "sft_cot": [str(tmp_path / "sft.jsonl")],
        "store": {"uri": str(tmp_path / "index.db")},
    }
    cfg = load(IndexConfig, "tiny/index", overrides)
    first = build_index(cfg)
    assert first.count == first.report["num_written"] == 8  # mq0..mq6 and mm0
    assert first.report["rejected_by_reason"] == {
        "cot_answer_mismatch": 1,
        "bad_json": 1,
        "bad_answer": 1,
    }
    assert {(r["at"], r["reason"]) for r in first.report["rejects"]} == {
        ("train.jsonl:9", "bad_json"),
        ("train.jsonl:10", "bad_answer"),
        ("train.jsonl:8", "cot_answer_mismatch"),
    }
    # named after the store file, so two stores in one folder keep their own report and config
    assert first.report_path == tmp_path / "index.medprompt_examples_report.json"
    assert first.config_path == tmp_path / "index.medprompt_examples_config.yaml"
    second = build_index(cfg)
    assert second.count == 8 and second.report["num_written"] == 8
    store = MilvusExampleStore(cfg.store)
    pool = store.all_examples()
    store.close()
    by_id = {ex.id: ex for ex in pool}  # clinray.qa ids: {benchmark}/{split}/{native id}
    assert by_id["medmcqa/train/mm0"].answer == "y" and by_id["medmcqa/train/mm0"].source == "medmcqa"
    mq3 = by_id["medqa/train/mq3"]
    assert mq3.explanation == "Because 3." and mq3.answer_index == 3


def test_index_reports_of_two_stores_in_one_folder_do_not_collide(tmp_path):
    from clinray.retrieval.build_index import _config_path, _default_report_path

    a = _default_report_path(StoreConfig(uri=str(tmp_path / "a.db"), collection="ex"))
    b = _default_report_path(StoreConfig(uri=str(tmp_path / "b.db"), collection="ex"))
    assert (a.name, b.name) == ("a.ex_report.json", "b.ex_report.json")
    assert (
        _config_path(a).name == "a.ex_config.yaml"
        and _config_path(tmp_path / "r.json").name == "r_config.yaml"
    )


def test_unlabelled_or_missing_index_input_is_a_one_line_error(tmp_path):
    from clinray.retrieval.build_index import IndexConfig, InputSpec, load_examples

    medqa = tmp_path / "medqa"
    medqa.mkdir()
    (medqa / "test.jsonl").write_text(json.dumps({"question": "Q?", "options": {"A": "a", "B": "b"}}) + "\n")
    with pytest.raises(ValueError, match="has an answer") as err:
        load_examples(IndexConfig(inputs=[InputSpec(path=str(medqa / "test.jsonl"))]))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="native layout"):
        load_examples(IndexConfig(inputs=[InputSpec(path=str(medqa / "nope.jsonl"))]))


def test_an_index_built_here_is_searched_from_another_process(embedder, tmp_path):
    """The serving replica opens the index the build wrote: another process, after the builder closed."""
    import subprocess
    import sys
    import textwrap

    uri = str(tmp_path / "handoff.db")
    store = MilvusExampleStore(StoreConfig(uri=uri, index_type="FLAT", dim=4))
    store.ensure_collection()
    basis = np.eye(4, dtype=np.float32)
    store.upsert(
        [
            {
                "id": f"e{i}",
                "vector": basis[i],
                "question": f"Question {i}?",
                "options": list(OPTIONS),
                "answer_index": i,
                "explanation": f"Because {i}.",
                "source": "handoff",
            }
            for i in range(4)
        ]
    )
    store.flush()
    store.close()
    reader = textwrap.dedent(
        f"""
        import json
        from clinray.retrieval.milvus_store import MilvusExampleStore, StoreConfig
        store = MilvusExampleStore(StoreConfig(uri={uri!r}, index_type="FLAT", dim=4))
        hits = store.search([0.1, 0.0, 0.9, 0.0], k=2)
        print(json.dumps({{"count": store.count(), "ids": [ex.id for ex, _ in hits[0]]}}))
        store.close()
        """
    )
    proc = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"count": 4, "ids": ["e2", "e0"]}
