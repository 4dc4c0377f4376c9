"""serve/medprompt.yaml is a valid Serve config that binds loopback, and its args are valid ServeArgs."""

from __future__ import annotations

from pathlib import Path

import yaml

from clinray.serve.app import ServeArgs
from clinray.serve.run import ServeConfig

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_file_is_valid_and_loopback():
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load((ROOT / "serve" / "medprompt.yaml").read_text())
    schema = ServeDeploySchema.model_validate(data)  # what `serve run` / `serve deploy` check
    assert schema.http_options.host == "127.0.0.1"  # the schema's default would be 0.0.0.0
    (app,) = data["applications"]
    assert app["import_path"] == "clinray.serve.app:build_app"
    args = ServeArgs.model_validate(app["args"])
    assert args.host == "127.0.0.1" and not args.auth.disabled and args.cors_origins == []


def test_job_config_maps_to_app_args():
    cfg = ServeConfig(model="m", store_uri="s.db", n_ensemble=3, shuffle_examples=True, batching=False)
    args = cfg.to_args()
    assert (args.medprompt.n_ensemble, args.medprompt.shuffle_examples, args.batch.enabled) == (
        3,
        True,
        False,
    )
    assert args.engine.model == "m" and args.store.uri == "s.db" and args.host == "127.0.0.1"
    problems = ServeConfig(
        model="/no/model", store_uri="/no/index.db", host="0.0.0.0", auth_disabled=True
    ).check_inputs()
    assert len(problems) == 3 and any("refused" in p for p in problems)


def test_vllm_is_imported_only_when_asked_and_its_absence_is_one_clear_error():
    import importlib.util

    import pytest

    from clinray.engines.base import EngineUnavailableError
    from clinray.serve.app import build_app

    app = build_app({**_ARGS, "auth": {"disabled": True}})  # the transformers default builds without vLLM
    assert app is not None
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(EngineUnavailableError, match="engine.kind=vllm needs vLLM"):
        build_app({**_ARGS, "engine": {"kind": "vllm", "model": "m"}, "auth": {"disabled": True}})


_ARGS = {"engine": {"model": "some/model"}, "store": {"uri": "index.db"}}
