"""Curation -> pack -> pretraining with every path an ``s3://`` URI, on a real S3 API server on 127.0.0.1.

The server is moto's (``ThreadedMotoServer``): the S3 REST API over HTTP, the same requests pyarrow,
Ray Data and Ray Train send to AWS, no client mocked. Ray workers resolve the URIs themselves, from
the standard AWS variables of their environment, which they inherit from the process that starts Ray:
so this module sets them when it is imported (collection runs before any test, hence before the
session's ``ray.init``), on a port it reserves, and the fixture checks that a Ray task sees them.

One corpus upload, one curation (the row stages and exact dedup), one packing, and one pretraining run
of 2 steps (2 workers, the tiny model, a checkpoint at step 2), then the same run again with 3 steps,
which must resume from the step-2 checkpoint in the bucket and ends with a checkpoint and an HF export.
Nothing may land in a local folder (the old ``runs/<name>`` of a URI storage path).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest

from clinray.config import load

BUCKET = "clinray-test"
S3 = f"s3://{BUCKET}"
RUN = "s3run"
FIRST_STEPS, MORE_STEPS = 2, 3


# The port stays bound (not listening) until the server starts, so nothing else is given it meanwhile.
_PORT_HOLDER = socket.socket()
_PORT_HOLDER.bind(("127.0.0.1", 0))
PORT = _PORT_HOLDER.getsockname()[1]
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{PORT}",
    "AWS_EC2_METADATA_DISABLED": "true",
}
for _name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
    os.environ.pop(_name, None)  # they would win over the test server's settings
os.environ.update(S3_ENV)  # before ray.init: the workers inherit it

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def s3_server(ray_local):
    import boto3
    import moto.server as moto_server  # a dev dependency: its absence is a failure, not a skip

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=PORT, verbose=False)
    _PORT_HOLDER.close()
    server.start()
    seen = ray_local.get(ray_local.remote(lambda: os.environ.get("AWS_ENDPOINT_URL")).remote())
    if seen != S3_ENV["AWS_ENDPOINT_URL"]:
        server.stop()
        pytest.fail(f"Ray workers see AWS_ENDPOINT_URL={seen!r}: Ray was started before this module set it")
    client = boto3.client("s3", endpoint_url=S3_ENV["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def _keys(client, prefix: str) -> list[str]:
    """Every object key under ``prefix``, listed by the S3 API itself."""
    keys, token = [], None
    while True:
        kwargs = {"Bucket": BUCKET, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = client.list_objects_v2(**kwargs)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


@pytest.fixture(scope="module")
def local_cwd(tmp_path_factory):
    """The driver runs in an empty folder: anything written to a relative local path shows up here."""
    folder = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        yield folder


@pytest.fixture(scope="module")
def corpus_uri(s3_server, world_dir) -> str:
    """The tiny world's clinical corpus and general JSONL, uploaded (the 158 general text files left out)."""
    from clinray import storage

    corpus = world_dir / "corpus"
    skip = {p.relative_to(corpus).as_posix() for p in (corpus / "general" / "text").glob("*")}
    storage.upload_dir(corpus, f"{S3}/corpus", skip=skip)
    return f"{S3}/corpus"


@pytest.fixture(scope="module")
def curated(corpus_uri, local_cwd):
    from clinray.data.pipeline import CurateConfig, run_curation

    cfg = load(
        CurateConfig,
        "tiny/curate",
        [
            f"input_root={corpus_uri}",
            f"output.dir={S3}/curate",
            "decontaminate.enabled=false",
            "substring.enabled=false",  # time: exact dedup already runs a shuffle and a marking pass
        ],
    )
    cfg.inputs = [spec for spec in cfg.inputs if not spec.glob.startswith("general/text")]
    assert cfg.check_inputs() == []
    return run_curation(cfg)


@pytest.fixture(scope="module")
def packed(curated, tiny_model_dir):
    from clinray.data.pack import PackConfig, run_pack

    cfg = load(
        PackConfig,
        "tiny/pack",
        [
            f"input_dir={curated.docs_dir}",
            f"output_dir={S3}/blocks",
            f"tokenizer={tiny_model_dir}",
            "seq_len=64",
        ],
    )
    assert cfg.check_inputs() == []
    return run_pack(cfg)


def _pretrain_cfg(model: Path, blocks: str, steps: int, *extra: str):
    from clinray.train.config import PretrainConfig

    return load(
        PretrainConfig,
        "tiny/pretrain",
        [
            f"model.path={model}",
            f"data.path={blocks}",
            f"run.storage_path={S3}/runs",
            f"run.name={RUN}",
            "train.global_batch_tokens=1024",
            "train.micro_batch_size=4",
            f"train.max_steps={steps}",
            "train.token_budget=0",
            "train.max_time_s=0",
            "train.checkpoint_every=2",
            "train.hf_export_every=0",
            "train.log_every=1",
            "optim.max_lr=3e-3",
            "scaling.num_workers=2",
            "run.max_failures=0",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def pretrained(packed, tiny_model_dir):
    from clinray.train.trainer import run_pretrain

    cfg = _pretrain_cfg(tiny_model_dir, str(packed.blocks_dir), FIRST_STEPS, "train.save_final=false")
    assert cfg.check_inputs() == []
    return run_pretrain(cfg)


def test_curation_reads_and_writes_the_bucket(curated, s3_server, local_cwd, world_dir):
    from clinray import storage

    assert curated.ok, curated.problems
    assert str(curated.docs_dir) == f"{S3}/curate/docs" and str(curated.report_json).startswith(S3)
    keys = _keys(s3_server, "curate/")
    for key in ("curate/_SUCCESS", "curate/report.json", "curate/report.md", "curate/config.yaml"):
        assert key in keys, key
    assert any(k.startswith("curate/docs/domain=clinical/") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("curate/docs/domain=general/") for k in keys)
    assert any(k.startswith("curate/accounting/stats/parse/") for k in keys)  # written by the workers
    assert any(k.startswith("curate/accounting/rejects/") for k in keys)
    # a global stage's side files: the summary by the driver, the cluster parts by its tasks
    assert "curate/accounting/details/minhash_summary.json" in keys
    assert any(k.startswith("curate/accounting/details/minhash_clusters.parquet/part-") for k in keys)
    assert any(k.startswith("curate/accounting/timings/minhash.") for k in keys)
    report = json.loads(storage.read_text(curated.report_json))
    assert report["identities_hold"] and report["num_docs_out"] == curated.num_docs > 0
    parse = curated.stages["parse"]
    uploaded = [p for p in (world_dir / "corpus").rglob("*") if p.is_file() and "general/text" not in str(p)]
    assert parse.extra["num_files_in"] == len(uploaded) == len(_keys(s3_server, "corpus/"))  # all were read
    # documents remember their source object
    import pyarrow.dataset as pads

    fs, path = storage.filesystem(curated.docs_dir)
    files = pads.dataset(path, filesystem=fs, partitioning="hive").to_table(columns=["input_file"])
    assert all(f.startswith(f"{S3}/corpus/") for f in files["input_file"].to_pylist())
    assert not any(local_cwd.iterdir()), sorted(p.name for p in local_cwd.iterdir())


def test_pack_reads_and_writes_the_bucket(packed, s3_server):
    from clinray.data.blocks import block_files, read_block_manifest

    assert packed.ok, packed.problems
    keys = _keys(s3_server, "blocks/")
    assert "blocks/manifest.json" in keys and "blocks/config.yaml" in keys
    manifest = read_block_manifest(packed.blocks_dir)
    assert manifest == packed.manifest and manifest["seq_len"] == 64
    assert manifest["blocks_per_source"]["clinical"] > 0 and manifest["blocks_per_source"]["general"] > 0
    assert all(f.startswith(f"{S3}/blocks/") for f in block_files(packed.blocks_dir))


def test_pretraining_writes_checkpoints_and_metrics_to_the_bucket(pretrained, s3_server, local_cwd):
    from clinray.train.metrics import read_metrics

    run = f"runs/{RUN}/"
    assert pretrained.ok, pretrained.problems
    assert pretrained.run_dir == f"{S3}/{run}".rstrip("/")
    keys = _keys(s3_server, run)
    folder = f"{run}checkpoint_{FIRST_STEPS:07d}/"
    assert f"{folder}clinray_state.json" in keys and f"{folder}.metadata" in keys
    for name in ("metrics.jsonl", "loss_per_source.png", "config.yaml", "plan.json"):
        assert run + name in keys, name
    assert any(k.startswith(f"{run}tensorboard/") for k in keys)
    rows = read_metrics(f"{pretrained.run_dir}/metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, FIRST_STEPS + 1))
    assert all(r["resumed_from"] is None for r in rows)
    assert not any(local_cwd.iterdir()), sorted(p.name for p in local_cwd.iterdir())  # no local runs/


def test_rerun_resumes_from_the_bucket_and_exports_there(
    pretrained, packed, tiny_model_dir, s3_server, local_cwd
):
    from clinray import storage
    from clinray.train.metrics import read_metrics
    from clinray.train.trainer import run_pretrain

    first = read_metrics(f"{pretrained.run_dir}/metrics.jsonl")
    summary = run_pretrain(_pretrain_cfg(tiny_model_dir, str(packed.blocks_dir), MORE_STEPS))
    assert summary.ok, summary.problems
    rows = read_metrics(f"{summary.run_dir}/metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, MORE_STEPS + 1))
    assert rows[:FIRST_STEPS] == first  # the first run's rows are kept: the restarted rank 0 appended
    resumed = rows[FIRST_STEPS:]
    assert all(r["resumed_from"] == FIRST_STEPS for r in resumed), "not resumed from the bucket's checkpoint"
    assert resumed[0]["tokens_seen"] == (FIRST_STEPS + 1) * 1024
    print(
        f"losses: first run {[round(r['loss'], 3) for r in first]}, resumed {[round(r['loss'], 3) for r in resumed]}"
    )
    assert resumed[0]["loss"] < first[0]["loss"], "the restored model is no better than a fresh one"
    assert summary.checkpoint and summary.checkpoint.endswith(f"checkpoint_{MORE_STEPS:07d}")
    run = f"runs/{RUN}/"
    keys = _keys(s3_server, run)
    assert f"{run}checkpoint_{MORE_STEPS:07d}/clinray_state.json" in keys
    for name in ("config.json", "model.safetensors", "tokenizer.json", "clinray_meta.json"):
        assert f"{run}hf/final/{name}" in keys and f"{run}hf/step_{MORE_STEPS}/{name}" in keys, name
    assert str(summary.hf_final) == f"{summary.run_dir}/hf/final"
    meta = json.loads(storage.read_text(f"{summary.hf_final}/clinray_meta.json"))
    assert meta["step"] == MORE_STEPS and meta["source_run"] == summary.run_dir
    assert not any(local_cwd.iterdir())


def test_sft_packs_into_the_bucket_trains_from_it_and_reuses_it(
    tiny_model_dir, world_dir, s3_server, local_cwd
):
    """SFT with a URI storage path: the packed rows go to the bucket (manifest last), the workers read
    them from there, and the data stage run again reuses them (fingerprint) without packing anew.
    (A resume from the bucket is the pretraining test's: the same loop and checkpoint code.)"""
    from clinray import storage
    from clinray.sft.prepare import _prepare_on_storage, run_sft
    from clinray.train.config import TrainConfig
    from clinray.train.metrics import read_metrics

    questions = world_dir / "questions"
    cfg = load(
        TrainConfig,
        "tiny/sft",
        [
            f"model.path={tiny_model_dir}",
            f"sft.paths.medqa={questions / 'medqa' / 'train.jsonl'}",
            f"sft.paths.medmcqa={questions / 'medmcqa' / 'train.json'}",
            "sft.option_orders=1",
            "sft.epochs=1",
            "sft.seq_len=256",
            f"sft.decontaminate.questions_root={questions}",
            f"run.storage_path={S3}/runs",
            "run.name=s3sft",
            "train.global_batch_tokens=1024",
            "train.micro_batch_size=2",
            "train.max_steps=2",
            "train.max_time_s=0",
            "train.checkpoint_every=2",
            "train.hf_export_every=0",
            "train.log_every=1",
        ],
    )
    result = run_sft(cfg)
    assert result.ok, result.problems
    data = f"{S3}/runs/s3sft/sft_data"
    assert result.data_dir == data and result.data["path"] == data
    keys = _keys(s3_server, "runs/s3sft/")
    for key in (
        "sft_data/manifest.json",
        "sft_data/epoch-00.parquet",
        "metrics.jsonl",
        "hf/final/config.json",
    ):
        assert f"runs/s3sft/{key}" in keys, key
    assert any(k.startswith("runs/s3sft/checkpoint_0000002/") for k in keys)
    assert [r["step"] for r in read_metrics(f"{result.run_dir}/metrics.jsonl")] == [1, 2]
    stamp = s3_server.head_object(Bucket=BUCKET, Key="runs/s3sft/sft_data/epoch-00.parquet")["LastModified"]
    again = _prepare_on_storage(cfg, data)  # what a re-run's data stage does: fetch the manifest, reuse
    assert again["fingerprint"] == result.data["fingerprint"] and again["path"] == data
    assert (
        s3_server.head_object(Bucket=BUCKET, Key="runs/s3sft/sft_data/epoch-00.parquet")["LastModified"]
        == stamp
    )
    assert storage.isfile(f"{result.hf_final}/config.json")
    assert not any(local_cwd.iterdir())
