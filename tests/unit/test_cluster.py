"""The cluster configs in ``cluster/``, checked offline: no Ray cluster, no cloud, no network.

* Launcher YAMLs (``cluster/aws-h100.yaml``, ``cluster/gcp-h100.yaml``): Ray's own ``prepare_config`` then
  ``validate_config`` (in that order: ``validate_config`` on a hand-written file can fail on a key that
  ``prepare_config`` fills), plus what Ray's schema cannot express: the GPU machine type, the image, every
  setup/start command key written out (a key left out is filled from Ray's ``defaults.yaml``), EFA and a
  placement group on p5, a CPU head, and enough GPU nodes for the paper's pretraining recipes.
* KubeRay manifests (``cluster/kuberay/``): the ``openAPIV3Schema`` of the vendored KubeRay CRDs, made strict
  (unknown fields fail), Ray's own CR-to-autoscaler translation, and entrypoints, recipes, paths and GPU
  counts consistent with the recipes.
* ``docs/runbook.md``: every ``clinray submit`` command loads against its recipe.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from clinray.config import load
from clinray.jobs import JOBS
from clinray.recipes import recipe_job, resolve_recipe

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
#: The KubeRay CRDs (ray.io/v1, KubeRay v1.7.0), vendored with their README.
CRD_DIR = Path(__file__).resolve().parents[2] / "cluster/kuberay/crds"  # vendored, see its README

#: Command and file keys a launcher YAML must write out: any one left out comes from Ray's defaults.
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
FILE_KEYS = (
    "file_mounts",
    "cluster_synced_files",
    "file_mounts_sync_continuously",
    "rsync_exclude",
    "rsync_filter",
)

#: What each launcher file must provide: provider, GPU machine type, machine-type key, CPUs per GPU node.
LAUNCHERS = {
    "aws-h100.yaml": {"provider": "aws", "type_key": "InstanceType", "gpu_type": "p5.48xlarge", "cpus": 192},
    "gcp-h100.yaml": {"provider": "gcp", "type_key": "machineType", "gpu_type": "a3-highgpu-8g", "cpus": 208},
}
GPUS_PER_NODE = 8
ACCELERATOR = "H100"
PRETRAIN_RECIPES = ("paper/mistral7b_pretrain", "paper/mixtral8x7b_pretrain")
#: Pieces added by later issues: referenced by the manifests, marked PENDING in them.
PENDING_MODULES: set[str] = set()
PENDING_RECIPES: set[str] = set()
SERVE_IMPORT_PATH = "clinray.serve.app:build_app"
SHARED = "/mnt/shared"


def _ray_version() -> str:
    import ray

    return ray.__version__


# ---------------------------------------------------------------------------------------------------------
# Launcher YAMLs
# ---------------------------------------------------------------------------------------------------------


@functools.cache
def _raw(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _prepared(raw: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def _gpu_type(raw: dict) -> tuple[str, dict]:
    gpu = [(n, t) for n, t in raw["available_node_types"].items() if t["resources"].get("GPU")]
    assert len(gpu) == 1, f"expected one GPU node type, got {[n for n, _ in gpu]}"
    return gpu[0]


def _pretrain_scaling(recipe: str):
    return load(JOBS["pretrain"].config_class(), resolve_recipe(recipe)).scaling


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_prepare_then_validate(name):
    prepared = _prepared(_raw(name))
    assert prepared["provider"]["type"] == LAUNCHERS[name]["provider"]
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_writes_every_key_ray_would_fill(name):
    """No top-level key of the provider's defaults.yaml is left to Ray: the prepared config is the file."""
    from ray.autoscaler._private.providers import _get_default_config

    raw = _raw(name)
    defaults = _get_default_config(raw["provider"])
    missing = [key for key in (*defaults, *COMMAND_KEYS, *FILE_KEYS) if key not in raw]
    assert not missing, f"{name} leaves {missing} to Ray's defaults"
    prepared = _prepared(raw)
    assert prepared["head_setup_commands"] == raw["setup_commands"] + raw["head_setup_commands"]
    assert prepared["worker_setup_commands"] == raw["setup_commands"] + raw["worker_setup_commands"]
    for key in (
        "initialization_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        *FILE_KEYS,
    ):
        assert prepared[key] == raw[key], key
    commands = " ".join(str(c) for key in COMMAND_KEYS for c in prepared[key])
    assert "ray-wheels" not in commands and "3.0.0.dev0" not in commands
    assert "google-api-python-client==1.7.8" not in commands


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_installs_clinray_with_cuda_torch(name):
    raw = _raw(name)
    assert raw["file_mounts"].get("~/clinray") == ".", "the checkout is synced to ~/clinray"
    setup = raw["setup_commands"]
    torch = [c for c in setup if "torch==" in c]
    assert torch and all("download.pytorch.org/whl/cu" in c for c in torch), "the CUDA torch, not the CPU pin"
    assert any(re.search(r"pip install .*-e ~/clinray", c) for c in setup)
    start = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("clinray-env.sh" in c for c in start if "ray start" in c), "NCCL env for every ray start"
    env = " ".join(setup)
    assert "NCCL_DEBUG=INFO" in env
    if LAUNCHERS[name]["provider"] == "aws":
        assert "FI_PROVIDER=efa" in env and "FI_EFA_USE_DEVICE_RDMA=1" in env


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_docker_image_matches_installed_ray(name):
    docker = _raw(name)["docker"]
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[0-9.]+)-py(?P<py>3\d+)-gpu", docker["image"])
    assert match, docker["image"]
    assert match["ray"] == _ray_version()
    assert int(match["py"][1:]) >= 11, "clinray needs Python >= 3.11"
    for node_type in _raw(name)["available_node_types"].values():
        assert "worker_image" not in node_type.get("docker", {}), "one image for every node"


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_head_is_cpu_only(name):
    raw = _raw(name)
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "no task or actor on the head"
    spec = LAUNCHERS[name]
    assert head["node_config"][spec["type_key"]] != spec["gpu_type"]


@pytest.mark.parametrize("recipe", PRETRAIN_RECIPES)
@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_gpu_nodes_fit_pretrain_recipe(name, recipe):
    spec, scaling = LAUNCHERS[name], _pretrain_scaling(recipe)
    type_name, node_type = _gpu_type(_raw(name))
    assert node_type["node_config"][spec["type_key"]] == spec["gpu_type"]
    resources = node_type["resources"]
    assert resources["GPU"] == GPUS_PER_NODE and resources["CPU"] == spec["cpus"]
    assert resources[f"accelerator_type:{ACCELERATOR}"] == 1
    assert scaling.use_gpu and scaling.accelerator_type == ACCELERATOR
    assert node_type.get("min_workers", 0) == 0 and node_type["max_workers"] == 10, "scales 0 to 10"
    gpus_per_worker = scaling.resources_per_worker.get("GPU", 1)
    assert node_type["max_workers"] * resources["GPU"] >= scaling.num_workers * gpus_per_worker
    workers_per_node = resources["GPU"] // gpus_per_worker
    assert resources["CPU"] >= workers_per_node * scaling.resources_per_worker.get("CPU", 1)
    assert _raw(name)["max_workers"] >= sum(
        t.get("max_workers", 0) for t in _raw(name)["available_node_types"].values()
    )


def test_aws_image_id_is_explicit_and_not_latest_dlami():
    for name, node_type in _raw("aws-h100.yaml")["available_node_types"].items():
        image = node_type["node_config"].get("ImageId", "")
        assert image.startswith("ami-"), f"{name}: ImageId {image!r}"
        assert image != "latest_dlami"
    assert "Ubuntu 18.04" in (CLUSTER / "aws-h100.yaml").read_text(), "the file says why not latest_dlami"


def test_aws_p5_has_32_efa_interfaces_and_a_placement_group():
    _, node_type = _gpu_type(_raw("aws-h100.yaml"))
    cfg = node_type["node_config"]
    assert cfg["Placement"]["GroupName"]
    interfaces = cfg["NetworkInterfaces"]
    assert len(interfaces) == 32
    assert sorted(i["NetworkCardIndex"] for i in interfaces) == list(range(32))
    assert all(i["InterfaceType"] in ("efa", "efa-only") for i in interfaces)
    assert [i["DeviceIndex"] for i in interfaces if i["NetworkCardIndex"] == 0] == [0]
    # Ray's aws/config.py (_configure_subnets_and_groups_from_network_interfaces): subnets and security
    # groups only inside the interfaces, and in every one of them.
    assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & set(cfg)
    assert all(i.get("SubnetId") and i.get("Groups") for i in interfaces)
    try:  # Ray's own check too, where boto3 (which aws/config.py imports) is installed
        from ray.autoscaler._private.aws.config import _configure_subnets_and_groups_from_network_interfaces
    except ImportError:
        pass
    else:
        assert len(_configure_subnets_and_groups_from_network_interfaces(cfg)["SubnetIds"]) == 32
    run_options = " ".join(node_type["docker"]["worker_run_options"])
    assert "/dev/infiniband" in run_options and "IPC_LOCK" in run_options and "--gpus" in run_options


def test_gcp_boot_images_and_tcpx_notes():
    raw = _raw("gcp-h100.yaml")
    for name, node_type in raw["available_node_types"].items():
        boot = [d for d in node_type["node_config"]["disks"] if d.get("boot")]
        assert boot and boot[0]["initializeParams"]["sourceImage"], name
        assert "." not in name, "GCP label values allow no dots"
    _, gpu = _gpu_type(raw)
    assert gpu["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"
    text = (CLUSTER / "gcp-h100.yaml").read_text()
    for note in ("GPUDirect-TCPX", "tcpgpudmarxd", "4 extra", "sockets"):
        assert note in text


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_misspelled_top_level_key_fails(name):
    raw = copy.deepcopy(_raw(name))
    raw["max_worker"] = raw.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        _prepared(raw)


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_fractional_gpu_fails(name):
    raw = copy.deepcopy(_raw(name))
    type_name, _ = _gpu_type(raw)
    raw["available_node_types"][type_name]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError, match="0.5 is not of type 'integer'"):
        _prepared(raw)


# ---------------------------------------------------------------------------------------------------------
# KubeRay manifests
# ---------------------------------------------------------------------------------------------------------


def _strict(schema):
    """``additionalProperties: false`` on every object schema that lists ``properties`` and allows nothing
    else explicitly (as ``kubeconform -strict`` does): a misspelled field fails instead of being pruned."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, tuple[jsonschema.Draft7Validator, jsonschema.Draft7Validator]]:
    """kind -> (plain, strict) validators of the ray.io/v1 schema of each vendored CRD."""
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    validators = {}
    for path in sorted(CRD_DIR.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=loader)
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = version["schema"]["openAPIV3Schema"]
        validators[crd["spec"]["names"]["kind"]] = (
            jsonschema.Draft7Validator(schema),
            jsonschema.Draft7Validator(_strict(schema)),
        )
    assert {"RayCluster", "RayJob", "RayService"} <= set(validators)
    return validators


def _manifests() -> list[Path]:
    return sorted(KUBERAY.glob("*.yaml"))


@functools.cache
def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def _ray_docs(kind: str) -> list[tuple[str, dict]]:
    return [(p.name, d) for p in _manifests() for d in _docs(p.name) if d["kind"] == kind]


def _all_cluster_specs() -> list[tuple[str, dict]]:
    """(file, cluster spec) of every RayCluster, RayJob (with rayClusterSpec) and RayService."""
    docs = [d for kind in ("RayCluster", "RayJob", "RayService") for d in _ray_docs(kind)]
    return [(name, spec) for name, doc in docs if (spec := _cluster_spec(doc)) is not None]


def _cluster_spec(doc: dict) -> dict | None:
    return {
        "RayCluster": lambda: doc["spec"],
        "RayJob": lambda: doc["spec"].get("rayClusterSpec"),
        "RayService": lambda: doc["spec"]["rayClusterConfig"],
    }[doc["kind"]]()


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec.get("workerGroupSpecs", []) if "nvidia.com/gpu" in _limits(g)]


def _limits(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


def _entrypoint(doc: dict) -> tuple[str, str, list[str]]:
    """``(module, recipe, overrides)`` of ``python -m ray_jobs.<module> --config <recipe> --set ...``."""
    words = shlex.split(doc["spec"]["entrypoint"])
    assert words[:2] == ["python", "-m"] and words[2].startswith("ray_jobs."), words[:3]
    assert words[3] == "--config", words
    overrides, rest = [], words[5:]
    while rest:
        assert rest[0] == "--set", rest
        overrides.append(rest[1])
        rest = rest[2:]
    return words[2].removeprefix("ray_jobs."), words[4], overrides


def _job_of_module(module: str):
    jobs = [job for job in JOBS.values() if job.ray_job == module]
    assert len(jobs) == 1, f"no job runs ray_jobs.{module}"
    return jobs[0]


def _rayjob(name: str) -> dict:
    (doc,) = _docs(name)
    return doc


def _job_config(name: str):
    module, recipe, overrides = _entrypoint(_rayjob(name))
    return load(_job_of_module(module).config_class(), resolve_recipe(recipe), overrides)


@pytest.mark.parametrize("name", [p.name for p in _manifests()])
def test_manifest_matches_crd_schema_strictly(name, crd_validators):
    for doc in _docs(name):
        if doc["apiVersion"] != "ray.io/v1":
            assert (doc["apiVersion"], doc["kind"]) == ("v1", "PersistentVolumeClaim"), doc["kind"]
            assert doc["spec"]["accessModes"] == ["ReadWriteMany"]
            continue
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validators[doc["kind"]][1].iter_errors(doc)
        ]
        assert not errors, "\n".join(errors)


def test_strict_mode_catches_misspelled_fields(crd_validators):
    plain, strict = crd_validators["RayCluster"]
    (doc,) = _docs("raycluster.yaml")
    bad = copy.deepcopy(doc)
    bad["spec"]["enableInTreeAutoscalin"] = bad["spec"].pop("enableInTreeAutoscaling")
    container = bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    assert plain.is_valid(bad), "the CRDs alone allow unknown fields (Kubernetes prunes them)"
    messages = " ".join(e.message for e in strict.iter_errors(bad))
    assert "'enableInTreeAutoscalin' was unexpected" in messages
    assert "'resource' was unexpected" in messages
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert not plain.is_valid(wrong_type), "rayStartParams values are strings"


def test_raycluster_autoscales_a_cpu_head_and_h100_group():
    (doc,) = _docs("raycluster.yaml")
    spec = doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert not any(
        "nvidia.com/gpu" in c["resources"]["limits"]
        for c in spec["headGroupSpec"]["template"]["spec"]["containers"]
    )
    (gpu,) = _gpu_groups(spec)
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 10)
    assert int(_limits(gpu)["nvidia.com/gpu"]) == GPUS_PER_NODE


def _group_resources(group: dict) -> dict[str, int]:
    """Custom resources of a worker group, from ``resources`` or ``rayStartParams.resources``."""
    if group.get("resources"):
        return {k: int(v) for k, v in group["resources"].items()}
    params = group.get("rayStartParams", {}).get("resources")
    return yaml.safe_load(params.strip("'\"").replace("\\", "")) if params else {}


def test_gpu_groups_advertise_h100_and_do_not_mix_resource_fields():
    for name, spec in _all_cluster_specs():
        for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
            # the operator's validateRayGroupResources: rayStartParams resources or resources, not both
            params = group.get("rayStartParams", {})
            assert not (
                group.get("resources") and {"num-cpus", "num-gpus", "memory", "resources"} & set(params)
            )
        for group in _gpu_groups(spec):
            assert _group_resources(group).get(f"accelerator_type:{ACCELERATOR}") == 1, (
                name,
                group["groupName"],
            )
            assert (
                group["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == "p5.48xlarge"
            )


def test_ray_derives_an_autoscaling_config():
    """Ray's own KubeRay translation (what the in-tree autoscaler runs) accepts every cluster spec."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    for name, spec in _all_cluster_specs():
        cr = {"metadata": {"name": "clinray", "namespace": "default"}, "spec": spec}
        types = _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]  # runs validate_config
        assert types["headgroup"]["resources"]["CPU"] == 0, name
        for group in _gpu_groups(spec):
            resources = types[group["groupName"]]["resources"]
            assert resources["GPU"] == GPUS_PER_NODE and resources[f"accelerator_type:{ACCELERATOR}"] == 1


def test_one_image_everywhere_pinned_to_the_installed_ray():
    ray_version = _ray_version()
    images = {c["image"] for _, spec in _all_cluster_specs() for c in _containers(spec)}
    assert len(images) == 1, images
    image = images.pop()
    assert image.endswith(f":0.1.0-ray{ray_version}-py311-gpu"), image
    assert all(spec["rayVersion"] == ray_version for _, spec in _all_cluster_specs())
    # the image is cluster/docker/Dockerfile, built on the launcher configs' base image
    (base,) = re.findall(r"^FROM (\S+)", (CLUSTER / "docker" / "Dockerfile").read_text(), flags=re.M)
    assert base == _raw("aws-h100.yaml")["docker"]["image"] == _raw("gcp-h100.yaml")["docker"]["image"]


def test_every_container_mounts_the_shared_volume():
    for name, spec in _all_cluster_specs():
        for container in _containers(spec):
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert SHARED in mounts, (name, container["name"])


@pytest.mark.parametrize("name", [n for n, _ in _ray_docs("RayJob")])
def test_rayjob_entrypoint_names_a_job_and_a_recipe(name):
    doc = _rayjob(name)
    module, recipe, overrides = _entrypoint(doc)
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    assert doc["spec"].get("rayClusterSpec") or doc["spec"].get("clusterSelector")
    assert all(o.split("=", 1)[1].startswith(SHARED) for o in overrides if "/" in o.split("=", 1)[1]), (
        overrides
    )
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**yaml.safe_load(doc["spec"].get("runtimeEnvYAML") or "{}"))
    exists = importlib.util.find_spec(f"ray_jobs.{module}") is not None
    if module in PENDING_MODULES and not exists:
        assert "PENDING" in (KUBERAY / name).read_text(), (
            f"{name}: ray_jobs.{module} is missing and not marked"
        )
        assert recipe in PENDING_RECIPES
        return
    assert exists, f"{name}: no module ray_jobs.{module}"
    job = _job_of_module(module)
    assert recipe_job(recipe) == job.name, (recipe, job.name)
    load(job.config_class(), resolve_recipe(recipe), overrides)  # keys and values valid; paths are remote


def _total(groups: list[dict], key: str) -> int:
    return sum(g["maxReplicas"] * int(_limits(g)[key]) for g in groups)


def _fixed_size(groups: list[dict]) -> None:
    for group in groups:
        assert group["minReplicas"] == group["maxReplicas"] == group["replicas"], group["groupName"]


def test_rayjob_pretrain_gpus_match_the_recipe():
    doc = _rayjob("rayjob-pretrain.yaml")
    cfg = _job_config("rayjob-pretrain.yaml")
    spec = doc["spec"]["rayClusterSpec"]
    groups = _gpu_groups(spec)
    if not spec.get("enableInTreeAutoscaling"):
        _fixed_size(groups)
    per_worker = cfg.scaling.resources_per_worker
    assert _total(groups, "nvidia.com/gpu") == cfg.scaling.num_workers * per_worker["GPU"] == 80
    for group in groups:
        workers_per_pod = int(_limits(group)["nvidia.com/gpu"]) // per_worker["GPU"]
        assert int(_limits(group)["cpu"]) >= workers_per_pod * per_worker["CPU"]
    assert cfg.scaling.accelerator_type == ACCELERATOR


def test_rayjob_sft_is_sized_like_its_recipe():
    spec = _rayjob("rayjob-sft.yaml")["spec"]["rayClusterSpec"]
    groups = _gpu_groups(spec)
    _fixed_size(groups)
    scaling = _job_config("rayjob-sft.yaml").scaling
    assert (
        _total(groups, "nvidia.com/gpu")
        == scaling.num_workers * scaling.resources_per_worker.get("GPU", 1)
        == 32
    )


def test_rayjob_eval_cpu_and_gpu_fit_the_recipe():
    cfg = _job_config("rayjob-eval.yaml")
    groups = _gpu_groups(_rayjob("rayjob-eval.yaml")["spec"]["rayClusterSpec"])
    assert _total(groups, "nvidia.com/gpu") >= cfg.num_gpus_per_model * len(cfg.models)
    for group in groups:
        assert int(_limits(group)["nvidia.com/gpu"]) >= cfg.num_gpus_per_model
        assert int(_limits(group)["cpu"]) >= cfg.num_cpus_per_model * int(_limits(group)["nvidia.com/gpu"])


def test_rayjob_curate_and_pack_have_the_cpus_their_recipes_use():
    curate = _job_config("rayjob-curate.yaml")
    cpu_groups = _rayjob("rayjob-curate.yaml")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert _total(cpu_groups, "cpu") >= curate.readers.concurrency
    pack = _job_config("rayjob-pack.yaml")
    assert (
        _total(_rayjob("rayjob-pack.yaml")["spec"]["rayClusterSpec"]["workerGroupSpecs"], "cpu")
        >= pack.num_tokenizers
    )


def _overrides(name: str) -> dict[str, str]:
    return dict(o.split("=", 1) for o in _entrypoint(_rayjob(name))[2])


def test_rayjob_paths_chain():
    """curate output -> pack input -> pretrain data; pack tokenizer = pretrain model; exports -> SFT, eval, serve."""
    curate, pack = _job_config("rayjob-curate.yaml"), _job_config("rayjob-pack.yaml")
    pretrain = _job_config("rayjob-pretrain.yaml")
    assert pack.input_dir == f"{curate.output.dir}/docs"
    assert pretrain.data.path == pack.output_dir
    assert pretrain.model.path == pack.tokenizer
    pretrained = f"{pretrain.run.storage_path}/{pretrain.run.name}/hf/final"
    sft = _overrides("rayjob-sft.yaml")
    assert sft["model.path"] == pretrained
    sft_export = f"{sft['run.storage_path']}/{sft['run.name']}/hf/final"
    models = _job_config("rayjob-eval.yaml").models
    assert pretrained in models.values() and sft_export == models["mistral_7b_p_f"]
    assert all(path.startswith(SHARED) for path in models.values())
    serve = _serve_config()["applications"][0]
    assert serve["args"]["engine"]["model"] == sft_export


def _recipe(name: str):
    """A paper recipe loaded as its job loads it, with no override."""
    return load(JOBS[recipe_job(name)].config_class(), resolve_recipe(name), [])


def test_paper_recipes_chain_without_overrides():
    """configs/paper alone: each stage reads what the one before writes, all on the runbook's shared storage."""
    curate, pack = _recipe("paper/curate"), _recipe("paper/pack")
    assert pack.input_dir == f"{curate.output.dir}/docs"
    for model in ("mistral7b", "mixtral8x7b"):
        pretrain = _recipe(f"paper/{model}_pretrain")
        assert pretrain.data.path == pack.output_dir
        pretrained = f"{pretrain.run.storage_path}/{pretrain.run.name}/hf/final"
        for variant in ("sft", "sft_neftune"):
            sft = _recipe(f"paper/{model}_{variant}")
            assert sft.model.path == pretrained, (model, variant)
            assert sft.sft.decontaminate.questions_root == curate.decontaminate.questions_root
    assert _recipe("paper/mistral7b_pretrain").model.path == pack.tokenizer
    evaluation = _recipe("paper/eval")
    for run in ("mistral7b_clinical_pretrain", "mistral7b_p_f", "mistral7b_p_n"):
        assert f"{SHARED}/clinray/runs/{run}/hf/final" in evaluation.models.values(), run
    assert evaluation.data_dir == curate.decontaminate.questions_root  # decontaminated against what is scored
    paths = [curate.input_root, curate.output.dir, pack.output_dir, evaluation.out_dir]
    assert all(p.startswith(SHARED) for p in paths), paths


@functools.cache
def _serve_config() -> dict:
    (doc,) = _docs("rayservice-medprompt.yaml")
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def test_rayservice_serves_the_medprompt_app():
    from ray.serve.schema import ServeDeploySchema

    from clinray.serve.app import ServeArgs

    ServeDeploySchema.model_validate(_serve_config())
    (app,) = _serve_config()["applications"]
    assert app["import_path"] == SERVE_IMPORT_PATH
    module, _, attr = SERVE_IMPORT_PATH.partition(":")
    assert hasattr(importlib.import_module(module), attr)
    args = ServeArgs.model_validate(app["args"])  # the args are the app's own typed arguments
    assert args.engine.kind == "vllm" and not args.auth.disabled
    (doc,) = _docs("rayservice-medprompt.yaml")
    assert _gpu_groups(doc["spec"]["rayClusterConfig"]), "the endpoint runs on GPU pods"


# ---------------------------------------------------------------------------------------------------------
# The runbook's commands
# ---------------------------------------------------------------------------------------------------------


def _runbook_submits() -> list[list[str]]:
    text = (REPO / "docs" / "runbook.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip().startswith("clinray submit "):
                commands.append(shlex.split(command, comments=True))
    return commands


def test_runbook_submit_commands_load_against_their_recipes():
    from clinray.jobs import add_job_arguments, flag_overrides, get_job

    commands = _runbook_submits()
    stages = {words[2] for words in commands}
    assert {"curate", "pack", "pretrain", "eval", "index"} <= stages, stages
    for words in commands:
        job = get_job(words[2])
        job_args = words[words.index("--") + 1 :]
        parser = argparse.ArgumentParser()
        add_job_arguments(parser, job)
        args = parser.parse_args(job_args)
        try:
            path = resolve_recipe(args.config)
        except ValueError:  # a local copy the runbook tells you to make (eval_pretrained.yaml)
            assert args.config.endswith(".yaml"), args.config
            continue
        cfg = load(job.config_class(), path, [*args.overrides, *flag_overrides(job, args)])
        assert cfg is not None
        paths = [o.split("=", 1)[1] for o in args.overrides if "/" in o.split("=", 1)[1] and "[" not in o]
        assert all(p.startswith((SHARED, "http")) for p in paths), paths
