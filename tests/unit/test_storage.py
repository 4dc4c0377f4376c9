"""``clinray.storage`` on a real S3 API (moto's server on 127.0.0.1, no Ray): a URI behaves as the same
files on the local disk do (listing with glob's rules, reads, writes, folder copies), and the readers
list and open ``s3://`` inputs exactly as local ones."""

from __future__ import annotations

import gzip
import logging
import socket
from pathlib import Path

import pytest

from clinray import storage

BUCKET = "clinray-unit"
S3 = f"s3://{BUCKET}"


@pytest.fixture(scope="module")
def s3():
    """A fresh S3 server and bucket; the AWS variables point at it for this module only."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            mp.delenv(name, raising=False)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            mp.setenv(name, value)
        storage._FILESYSTEMS.pop(f"s3://{BUCKET}", None)  # resolved again, against this server
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield S3
        storage._FILESYSTEMS.pop(f"s3://{BUCKET}", None)
    server.stop()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for rel in ("a.txt", "b.json", "sub/c.txt", "sub/deep/d.txt", "sub/deep/x1.json", "sub/.hidden.txt"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {rel}\n")
    return root


PATTERNS = ["*.txt", "**/*.txt", "sub/*/x?.json", "**/*", "sub/[cd]*.txt", "sub/**/*.json", "nothing/*.txt"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_uri_glob_matches_local_glob(s3, tree, pattern):
    storage.upload_dir(tree, f"{s3}/tree")
    local = [(Path(p).relative_to(tree).as_posix(), size) for p, size in storage.find(tree, pattern)]
    remote = [(p.removeprefix(f"{s3}/tree/"), size) for p, size in storage.find(f"{s3}/tree", pattern)]
    assert remote == local, pattern


def test_files_and_folders_round_trip(s3, tree, tmp_path):
    target = f"{s3}/round"
    assert not storage.exists(target) and not storage.isdir_nonempty(target)
    storage.upload_dir(tree, target, last=("a.txt",))
    assert storage.isdir_nonempty(target) and storage.isfile(f"{target}/sub/c.txt")
    assert storage.listdir(target) == ["a.txt", "b.json", "sub"]
    assert storage.read_text(f"{target}/sub/deep/d.txt") == "content of sub/deep/d.txt\n"
    storage.download_dir(target, tmp_path / "back")
    assert sorted(
        p.relative_to(tmp_path / "back") for p in (tmp_path / "back").rglob("*") if p.is_file()
    ) == (sorted(p.relative_to(tree) for p in tree.rglob("*") if p.is_file()))
    storage.copy_dir(f"{target}/sub", f"{s3}/copied")  # within the bucket: copied by the store
    assert storage.read_text(f"{s3}/copied/deep/x1.json") == "content of sub/deep/x1.json\n"
    storage.rmtree(target)
    assert not storage.exists(target) and storage.glob(s3, "round/**/*") == []


def test_local_dir_for_replaces_the_target_and_uploads_nothing_when_nothing_was_written(s3):
    target = f"{s3}/export"
    storage.write_text(f"{target}/stale.bin", "old")
    with storage.local_dir_for(target) as local:
        assert not storage.is_uri(local)  # a non-zero rank writes nothing: the target is left alone
    assert storage.isfile(f"{target}/stale.bin")
    with storage.local_dir_for(target) as local:
        local.mkdir()
        (local / "config.json").write_text("{}")
        (local / "model.safetensors").write_bytes(b"\0" * 10)
    assert sorted(storage.listdir(target)) == ["config.json", "model.safetensors"]
    with storage.local_dir_for(f"{s3}/one.yaml") as local:
        local.write_text("a: 1\n")
    assert storage.read_text(f"{s3}/one.yaml") == "a: 1\n"


def test_missing_paths_are_checked_on_the_bucket(s3):
    from clinray.results import missing_dir, missing_file, missing_glob

    storage.write_text(f"{s3}/checks/x.txt", "x")
    assert missing_dir(f"{s3}/checks", "input_root") == []
    assert missing_dir(f"{s3}/nowhere", "input_root") == [f"input_root '{s3}/nowhere' holds no file"]
    assert missing_file(f"{s3}/checks/x.txt", "f") == [] and missing_file(f"{s3}/checks/y.txt", "f")
    assert missing_glob(f"{s3}/checks", "*.txt", "g") == [] and missing_glob(f"{s3}/checks", "*.md", "g")


def test_readers_list_and_open_uris_as_local_files(s3, tmp_path):
    from clinray.data.readers import InputSpec, ReadersConfig, expand_inputs, interleave, parse_file

    corpus = tmp_path / "corpus"
    (corpus / "text").mkdir(parents=True)
    for k in range(3):
        (corpus / "text" / f"doc{k}.txt").write_text(f"Document {k}. " + "word " * 40)
    with gzip.open(corpus / "text" / "zipped.txt.gz", "wt") as f:
        f.write("A compressed document. " + "word " * 40)
    storage.upload_dir(corpus, f"{s3}/corpus")
    specs = [InputSpec(glob="text/*.txt*", source="books", format="text")]
    local = interleave(expand_inputs(specs, root=corpus), root=corpus)
    remote = interleave(expand_inputs(specs, root=f"{s3}/corpus"), root=f"{s3}/corpus")
    assert [Path(f["path"]).name for f in remote] == [Path(f["path"]).name for f in local]  # same batches
    assert [f["size"] for f in remote] == [f["size"] for f in local]
    for ours, ref in zip(remote, local, strict=True):
        (a,) = parse_file(ours["path"], spec=specs[0], cfg=ReadersConfig())
        (b,) = parse_file(ref["path"], spec=specs[0], cfg=ReadersConfig())
        assert a["_reason"] is None and a["text"] == b["text"] and a["id"] == b["id"]
        assert a["input_file"] == ours["path"] and ours["path"].startswith(f"{s3}/corpus/text/")


def test_what_cannot_take_a_uri_yet_is_one_clear_line():
    from clinray.config import load
    from clinray.data.pipeline import CurateConfig, uri_limits
    from clinray.train.config import PretrainConfig
    from clinray.train.trainer import run_folders

    cfg = load(CurateConfig, "tiny/curate", ["output.dir=s3://bucket/curate", "decontaminate.enabled=false"])
    assert uri_limits(cfg) == []  # every stage's side files go through clinray.storage
    cfg = load(CurateConfig, "tiny/curate", ["decontaminate.questions_root=s3://bucket/questions"])
    assert uri_limits(cfg) == [
        "decontaminate.questions_root must be a local (or shared file system) folder, not a URI"
    ]
    train = load(PretrainConfig, "tiny/pretrain", ["run.storage_path=s3://bucket/runs", "run.name=r"])
    assert run_folders(train) == ("s3://bucket/runs/r", "s3://bucket/runs")
    train.train.task = "sft"  # SFT too: its packed rows are uploaded beside the checkpoints
    assert run_folders(train) == ("s3://bucket/runs/r", "s3://bucket/runs")
