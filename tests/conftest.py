"""Shared fixtures: one local Ray instance per session, the tiny world, the tiny model.

Everything is built once per test session into pytest's temporary folder; nothing is downloaded.
Integration tests take ``ray_local``; unit tests must not. Every test that uses ``ray_local``, directly
or through another fixture, is marked ``ray`` here, so ``-m "not ray"`` (``make test-fast``) skips them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Real public documents beside the checkout (``../shared/data``); tests using them skip when absent.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Mark ``ray`` every test whose fixture closure holds ``ray_local``."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster for the whole session (never an existing cluster: address="local")."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=1_500_000_000,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """The tiny world at seed 0, scale 1 (see docs/tiny_world.md)."""
    from clinray.synthetic import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=0, scale=1.0)
    return out


@pytest.fixture(scope="session")
def world_manifest(world_dir) -> dict:
    import json

    return json.loads((world_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def tiny_model_dir(world_dir, tmp_path_factory) -> Path:
    """A random tiny Mistral with a tokenizer trained on the world's corpus (HF folder)."""
    from clinray.models.tiny import build_tiny_model

    return build_tiny_model(world_dir / "corpus", tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
