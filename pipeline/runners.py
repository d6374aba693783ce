"""Where the pipeline runs: metadata connection, Beam arguments and the DAG runner."""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

from contract import source
from contract.config import KUBEFLOW_RESOURCES, Config, KubeflowConfig
from contract.errors import UserError
from pipeline.pipeline_def import create_pipeline

# Beam options with which TFX's executors take Python dependencies as handled (tfx.utils.dependency_utils).
DEPENDENCY_FLAGS = ("--setup_file", "--extra_package", "--requirements_file", "--sdk_container_image")


def metadata_path(config: Config) -> str:
    return os.path.join(config.workdir, "metadata.sqlite")


def metadata_connection(config: Config) -> Any:
    """SQLite under the workdir by default; ``mysql://user:pass@host:port/db`` for shared setups."""

    url = config.run.metadata
    if not url:
        os.makedirs(config.workdir, exist_ok=True)
        return tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path(config))
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "mysql" or not parsed.hostname or not parsed.path.strip("/"):
        raise UserError(f"--metadata must be mysql://user:password@host:port/database, got {url!r}")

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.mysql.host = parsed.hostname
    cfg.mysql.port = parsed.port or 3306
    cfg.mysql.database = parsed.path.strip("/")
    cfg.mysql.user = urllib.parse.unquote(parsed.username or "")
    cfg.mysql.password = urllib.parse.unquote(parsed.password or "")
    return cfg


def beam_args(config: Config) -> list[str]:
    """DirectRunner defaults (in-process, or N worker processes), plus user pass-through args."""
    args: list[str] = []
    if config.run.runner != "kubeflow" and not any(a.startswith("--runner") for a in config.run.beam_args):
        if config.run.beam_workers > 1:
            args += [
                "--direct_running_mode=multi_processing",
                f"--direct_num_workers={config.run.beam_workers}",
            ]
        else:
            args += ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
        # DirectRunner workers import from this environment and stage nothing. Without a
        # dependency flag, every TFX Beam executor copies TFX's install and builds an sdist of
        # it for remote workers, seconds of every run (docs/benchmarks.md, "`make run`"); naming
        # our own setup.py says "handled".
        if os.path.isfile(source.SETUP_FILE) and not any(
            a.startswith(DEPENDENCY_FLAGS) for a in config.run.beam_args
        ):
            args.append(f"--setup_file={source.SETUP_FILE}")
    return args + list(config.run.beam_args)


def run_pipeline(config: Config, through: str) -> None:
    """Build and run the pipeline with the configured runner (local or beam)."""

    if config.run.runner == "kubeflow":
        raise UserError(
            "--runner kubeflow compiles, it does not execute here: use `eventpipe run --runner kubeflow`"
        )
    if not config.run.data:
        raise UserError("no data: pass --data DIR (make demo data with `eventpipe generate --out DIR`)")
    if not os.path.exists(config.run.data):
        raise UserError(f"data path {config.run.data!r} does not exist; pass --data DIR with your events")
    pipeline = create_pipeline(
        config,
        data_root=os.path.abspath(config.run.data),
        pipeline_root=config.pipeline_root,
        metadata_connection_config=metadata_connection(config),
        beam_pipeline_args=beam_args(config),
        serving_base=config.serving_base,
        mobile_base=config.mobile_base,
        through=through,
    )
    if config.run.runner == "local":
        tfx.orchestration.LocalDagRunner().run(pipeline)
    elif config.run.runner == "beam":
        BeamDagRunner().run(pipeline)
    else:
        raise UserError(f"unknown runner {config.run.runner!r}; use local, beam or kubeflow")


TRAINER_WITH_ACCELERATORS = "TeacherTrainer"


def request_resources(pipeline: Any, kubeflow: KubeflowConfig) -> None:
    """Give every container component its CPU and memory (``kubeflow.resources``), and the
    TeacherTrainer ``kubeflow.gpus`` accelerators: the compiled spec's ``resources``."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    resource_spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    if kubeflow.gpus < 0:
        raise UserError(f"--gpus must be >= 0, got {kubeflow.gpus}")
    containers = {c.id: c for c in pipeline.components if hasattr(c, "with_platform_config")}
    known = set(containers) | set(KUBEFLOW_RESOURCES)  # a --through pipeline lacks the later ones
    unknown = sorted(set(kubeflow.resources) - known)
    if unknown:
        raise UserError(
            f"kubeflow.resources names {', '.join(unknown)}, not components of the pipeline "
            f"({', '.join(sorted(known))})"
        )
    missing = sorted(set(containers) - set(kubeflow.resources))
    if missing:
        raise UserError(f"kubeflow.resources has no [cpu, memory GB] for {', '.join(missing)}")
    for name, component in containers.items():
        value = kubeflow.resources[name]
        if len(value) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in value):
            raise UserError(
                f"kubeflow.resources[{name!r}] must be [cpu cores, memory GB], both positive; got {value!r}"
            )
        cpu, memory = float(value[0]), float(value[1])
        spec = resource_spec(cpu_request=cpu, cpu_limit=cpu, memory_request=memory, memory_limit=memory)
        if name == TRAINER_WITH_ACCELERATORS and kubeflow.gpus:
            spec.accelerator.type = kubeflow.accelerator
            spec.accelerator.count = kubeflow.gpus
        component.with_platform_config(spec)


def cluster_problems(config: Config) -> list[str]:
    """Why a cluster could not run the spec as configured: local paths and an image no registry
    holds (empty with ``kubeflow.allow_local``)."""
    if config.kubeflow.allow_local:
        return []
    problems = [
        f"{flag} {path} is a path on this machine, which the cluster's pods do not see: give a bucket "
        "(gs://, s3://, hdfs://, ...)"
        for flag, path in (
            ("--data", config.run.data),
            ("--pipeline-root", config.pipeline_root),
            ("run.serving_base", config.serving_base),
            ("run.mobile_base", config.mobile_base),
        )
        if "://" not in path or path.startswith("file://")
    ]
    image = config.run.image
    if "/" not in image.split("@")[0]:
        problems.append(
            f"--image {image} names no registry, so the cluster cannot pull it: build ./Dockerfile, push it "
            "and pass --image REGISTRY/eventpipe:TAG"
        )
    return problems


def compile_kubeflow(config: Config, output_path: str, *, through: str = "push") -> str:
    """Compile the same pipeline to a Kubeflow Pipelines v2 spec (JSON); returns its path.

    Paths (``--data``, ``run.pipeline_root``) are used as given: on a cluster they are bucket
    or shared-volume paths that need not exist on this machine. Metadata is the cluster's.
    """

    if not config.run.data:
        raise UserError("no data: pass --data with the events' location as the cluster sees it")
    problems = cluster_problems(config)
    if problems:
        raise UserError(
            "this spec could not run on a cluster:\n  "
            + "\n  ".join(problems)
            + "\n(--allow-local compiles it anyway, for a kind or minikube cluster "
            "that mounts this disk and has the image)"
        )
    pipeline = create_pipeline(
        config,
        data_root=config.run.data,
        pipeline_root=config.pipeline_root,
        metadata_connection_config=None,
        beam_pipeline_args=beam_args(config),
        serving_base=config.serving_base,
        mobile_base=config.mobile_base,
        through=through,
    )
    request_resources(pipeline, config.kubeflow)
    output_path = os.path.abspath(output_path)
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=config.run.image),
        output_dir=os.path.dirname(output_path),
        output_filename=os.path.basename(output_path),
    )
    runner.run(pipeline, write_out=True)
    return output_path
