"""``eventpipe validate`` and ``eventpipe run``: the pipeline as a user runs it."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

from contract import files
from contract.config import STRATEGIES, Config, add_config_flags, check_pretrain, check_teacher, load_config
from contract.errors import GateFailed, UserError
from pipeline import report
from pipeline.pipeline_def import STAGES
from pipeline.workdir_lock import lock_workdir, release_workdir

KFP_SPEC = "eventpipe_kfp.json"


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that runs (part of) the pipeline."""
    add_config_flags(p)
    p.add_argument("--data", metavar="DIR", dest="run.data",
                   help="events: JSONL manifests, an image-folder tree or TFRecords "
                        "(required unless --config sets run.data)")  # fmt: skip
    p.add_argument(
        "--workdir",
        metavar="DIR",
        dest="run.workdir",
        help="where metadata, artifacts and report.json go (default: work)",
    )
    p.add_argument(
        "--classes",
        metavar="A,B,C",
        dest="data.classes",
        help="class vocabulary a,b,c in label-id order (default: labels seen)",
    )
    p.add_argument(
        "--max-frames",
        metavar="K",
        dest="data.max_frames",
        type=int,
        help="most frames one event may have (default 16)",
    )
    p.add_argument(
        "--max-reject-rate",
        metavar="F",
        dest="data.max_reject_rate",
        type=float,
        help="stop if more events are rejected (default 0.05)",
    )
    p.add_argument(
        "--beam-arg",
        metavar="OPTION",
        dest="run.beam_args",
        action="append",
        help="Beam pipeline option passed through, e.g. --beam-arg=--runner=FlinkRunner",
    )
    p.add_argument(
        "--no-cache",
        dest="run.enable_cache",
        action="store_false",
        default=None,
        help="re-execute every component",
    )


def add_local_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the commands that orchestrate here (not compile-kubeflow, whose cluster decides)."""
    p.add_argument(
        "--runner",
        dest="run.runner",
        choices=["local", "beam", "kubeflow"],
        help="orchestrator (default local)",
    )
    p.add_argument(
        "--beam-workers",
        metavar="N",
        dest="run.beam_workers",
        type=int,
        help="DirectRunner worker processes (default 1)",
    )
    p.add_argument(
        "--metadata",
        metavar="URI",
        dest="run.metadata",
        help="ML Metadata store: mysql://user:pass@host:port/db (default SQLite in workdir)",
    )


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """Teacher flags for the commands that build the training stage (the rest via --set)."""
    p.add_argument(
        "--strategy",
        dest="teacher.strategy",
        choices=STRATEGIES,
        help="teacher distribution strategy (default hybrid)",
    )
    p.add_argument(
        "--train-workers",
        metavar="N",
        dest="teacher.workers",
        type=int,
        help="multiworker: local worker processes started on 127.0.0.1 when TF_CONFIG is unset (default 2)",
    )
    p.add_argument(
        "--pretrain",
        dest="pretrain.enabled",
        action="store_true",
        default=None,
        help="self-supervised pre-training of the teacher's backbone on every train and unlabelled event "
        "first (the Pretrainer; pretrain.* in the config)",
    )
    p.add_argument(
        "--train-clients",
        metavar="N",
        dest="teacher.clients",
        type=int,
        help="hybrid: DTensor client processes forming one mesh, started on 127.0.0.1 "
        "when DTENSOR_JOBS is unset (default 1)",
    )


def add_kubeflow_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image",
        metavar="IMAGE",
        dest="run.image",
        help="kubeflow: container image built from the repo's Dockerfile",
    )
    p.add_argument(
        "--pipeline-root",
        metavar="URI",
        dest="run.pipeline_root",
        help="kubeflow: artifact root as the cluster sees it (gs://...)",
    )
    p.add_argument(
        "--gpus",
        metavar="N",
        dest="kubeflow.gpus",
        type=int,
        help="kubeflow: accelerators for the TeacherTrainer (default 0)",
    )
    p.add_argument(
        "--accelerator",
        metavar="TYPE",
        dest="kubeflow.accelerator",
        help="kubeflow: accelerator type the cluster knows "
        "(default nvidia.com/gpu; e.g. NVIDIA_TESLA_T4 on Vertex)",
    )
    p.add_argument(
        "--allow-local",
        dest="kubeflow.allow_local",
        action="store_const",
        const=True,
        default=None,
        help="kubeflow: accept local paths and an image without a registry (a kind or minikube cluster "
        "that mounts this machine's disk and has the image loaded)",
    )


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "validate", help="ingest and validate events (TFX: EventExampleGen..ExampleValidator)",
        description="Ingest events into TFRecord examples (train / eval / unlabelled splits), compute "
        "statistics, infer a schema and check for anomalies; writes WORKDIR/report.json. Every event is "
        "accepted or quarantined with a reason.",
    )  # fmt: skip
    add_run_flags(p)
    add_local_run_flags(p)
    p.set_defaults(func=validate_command)

    p = subparsers.add_parser(
        "run", help="run the whole pipeline: ingest, train, productionize, push",
        description="Ingest and validate the events, train the teacher, distil, prune and quantize the "
        "student, check it against the gates and push the blessed models; prints where they went and "
        "the headline numbers, and writes WORKDIR/report.json and report.html.",
    )  # fmt: skip
    add_run_flags(p)
    add_local_run_flags(p)
    p.add_argument(
        "--through", choices=STAGES, default=STAGES[-1], help="stop after this stage (default: the last)"
    )
    add_training_flags(p)
    add_kubeflow_flags(p)
    p.set_defaults(func=run_command)

    p = subparsers.add_parser(
        "compile-kubeflow", help="compile the pipeline to a Kubeflow Pipelines v2 spec (JSON)",
        description="Write the pipeline as a Kubeflow Pipelines v2 spec for a cluster to run. Its paths "
        "(--data, --pipeline-root) must be ones every pod sees (gs://, s3://, ...) and --image one the "
        "cluster can pull; local ones are refused unless --allow-local.",
    )  # fmt: skip
    add_run_flags(p)
    add_training_flags(p)
    p.add_argument("--output", default=KFP_SPEC, help=f"spec file to write (default {KFP_SPEC})")
    add_kubeflow_flags(p)
    p.set_defaults(func=compile_kubeflow_command)


_created_workdirs: set[str] = (
    set()
)  # workdirs this process made (removed again if nothing usable came of them)


def prepare(args: argparse.Namespace) -> Config:
    cfg = load_config(args)
    check_teacher(cfg.teacher)  # a bad architecture field is one line here, not a failed TeacherTrainer later
    if cfg.pretrain.enabled:
        check_pretrain(
            cfg
        )  # before anything runs: a bad pretrain.* field is one line, not a failed component
    if not os.path.exists(cfg.workdir):
        _created_workdirs.add(os.path.abspath(cfg.workdir))
    lock_workdir(cfg.workdir)  # before anything is written there: one run per workdir at a time
    cfg.save(os.path.join(cfg.workdir, "config.json"))
    _quiet_libraries()
    return cfg


@contextlib.contextmanager
def no_half_workdir(cfg: Config) -> Iterator[None]:
    """A workdir this command created is removed again when it fails before report.json exists
    (e.g. unreadable --data): nothing in it is usable, and a rerun should start clean. Once the
    report exists the workdir is kept, with what ran."""
    try:
        yield
    except UserError:
        workdir = os.path.abspath(cfg.workdir)
        if workdir in _created_workdirs and not os.path.exists(cfg.report_path):
            release_workdir(workdir)
            _created_workdirs.discard(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"removed {workdir}: this run created it and nothing in it is usable", file=sys.stderr)
        raise


def _quiet_libraries() -> None:
    """TFX/Beam/absl log at INFO by default; users need our summary, not their chatter."""
    from absl import logging as absl_logging  # deferred, like TFX below: `eventpipe --help` starts fast

    warnings.filterwarnings("ignore")
    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("absl", "apache_beam", "tensorflow", "tfx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_through(cfg: Config, through: str) -> dict[str, Any]:
    """Run the pipeline through ``through``; return the outputs MLMD recorded for this run."""
    from pipeline import outputs, progress, runners

    started = time.time()
    connection = runners.metadata_connection(cfg)
    before = outputs.last_run_id(connection)
    error: BaseException | None = None
    try:
        with progress.stage_lines(connection, newer_than=before):
            runners.run_pipeline(cfg, through)
    except UserError:
        raise
    except Exception as e:  # a failing component: find which, and why, from MLMD below
        error = e
    found = outputs.latest_run(connection, newer_than=before)
    gen = found.get("EventExampleGen")
    if gen is None or "examples" not in gen.uris:
        raise error or RuntimeError("EventExampleGen produced no output")
    ingest = ingest_report(found)
    run = {**report.provenance(), "metadata": outputs.newest_run(connection)}
    report.update(cfg.report_path, {**ingest, "config": cfg.to_dict(), "run": run})
    if ingest["gate"]["blessed"] is False:
        raise GateFailed("ingest gate: " + "; ".join(ingest["gate"]["problems"]))
    if error is not None:
        raise error
    found["_seconds"] = time.time() - started
    return found


def ingest_report(found: dict[str, Any]) -> dict[str, Any]:
    """The events/quarantine/anomalies/gate part of report.json from this run's outputs."""
    from components.event_example_gen.beam_graph import SUMMARY_FILE
    from components.gates.ingest import read_anomalies

    gen = found["EventExampleGen"]
    examples_uri, quarantine_uri = gen.uris["examples"][0], gen.uris["quarantine"][0]
    with open(os.path.join(quarantine_uri, SUMMARY_FILE), encoding="utf-8") as f:
        summary = json.load(f)
    anomalies = []
    if "ExampleValidator" in found and found["ExampleValidator"].uris.get("anomalies"):
        anomalies = read_anomalies(found["ExampleValidator"].uris["anomalies"][0])
    section = report.ingest_section(summary, quarantine_uri, examples_uri, anomalies)
    if "StatisticsGen" in found and found["StatisticsGen"].uris.get("statistics"):
        try:  # a summary for people: never what fails a run
            section["statistics"] = report.statistics_glance(found["StatisticsGen"].uris["statistics"][0])
        except Exception as e:  # noqa: BLE001
            print(f"TFDV statistics not summarised: {type(e).__name__}: {e}", file=sys.stderr)
    section["gate"] = ingest_gate_verdict(found)
    return section


def ingest_gate_verdict(found: dict[str, Any]) -> dict[str, Any]:
    """The IngestGate's own verdict from its blessing; ``blessed`` None when it did not decide."""
    gate = found.get("IngestGate")
    uris = gate.uris.get("blessing") if gate is not None else None
    path = os.path.join(uris[0], files.VERDICT) if uris else ""
    if not os.path.exists(path):
        return {"blessed": None, "problems": []}
    with open(path, encoding="utf-8") as f:
        verdict = json.load(f)
    return {"blessed": bool(verdict["blessed"]), "problems": list(verdict["problems"])}


def print_ingest(cfg: Config, rep: dict[str, Any]) -> None:
    ev = rep["events"]
    reasons = ", ".join(f"{k} {v}" for k, v in ev["rejected_by_reason"].items()) or "none"
    print(
        f"events: read {ev['read']}, accepted {ev['accepted']} "
        f"(train {ev['splits'].get('train', 0)}, eval {ev['splits'].get('eval', 0)}, "
        f"unlabelled {ev['unlabelled']}), rejected {ev['rejected']} ({reasons})"
    )
    print(f"quarantine: {rep['quarantine']}")
    print(f"examples:   {rep['examples']}")
    print(f"anomalies:  {len(rep['anomalies'])}")


def validate_command(args: argparse.Namespace) -> int:
    cfg = prepare(args)
    try:
        with no_half_workdir(cfg):
            run_through(cfg, "validate")
    except GateFailed:
        rep = report.update(cfg.report_path, {})
        if "events" in rep:
            print_ingest(cfg, rep)
        print(f"report: {cfg.report_path}", file=sys.stderr)
        raise
    rep = report.update(cfg.report_path, {})
    print_ingest(cfg, rep)
    print(f"report: {cfg.report_path}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from pipeline import pushed_check, summary

    cfg = prepare(args)
    if cfg.run.runner == "kubeflow":  # the cluster executes it; here it is compiled
        with no_half_workdir(cfg):
            return _compile_kubeflow(cfg, os.path.join(cfg.workdir, KFP_SPEC), args.through)
    started = time.time()
    try:
        with no_half_workdir(cfg):
            found = run_through(cfg, args.through)
    except GateFailed:
        rep = report.update(cfg.report_path, {"seconds": round(time.time() - started, 1)})
        summary.print_summary(rep, cfg.report_path, _write_html(rep, cfg.report_path))
        raise
    sections = summary.collect(found, cfg)
    if args.through == STAGES[-1] and (sections.get("push") or {}).get("pushed"):
        sections["serving_check"] = pushed_check.check_pushed_model(
            cfg, found["EventExampleGen"].uris["examples"][0]
        )
    sections["seconds"] = round(time.time() - started, 1)
    rep = report.update(cfg.report_path, sections)
    summary.print_summary(rep, cfg.report_path, _write_html(rep, cfg.report_path))
    release = rep.get("release") if args.through == STAGES[-1] else None
    if release is not None and not release.get("blessed"):
        raise GateFailed("release gate: the student was not pushed; see 'release' in " + cfg.report_path)
    return 0


def _write_html(rep: dict[str, Any], report_path: str) -> str | None:
    """report.html beside report.json; a page that cannot be rendered is said, never fatal (the
    run's verdict and report.json stand, and a gate failure keeps its exit code)."""
    from pipeline import report_html

    try:
        return report_html.write(rep, report_path)
    except Exception as e:  # noqa: BLE001
        print(f"report.html not written: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def compile_kubeflow_command(args: argparse.Namespace) -> int:
    args.__dict__["run.runner"] = "kubeflow"
    cfg = prepare(args)
    with no_half_workdir(cfg):
        return _compile_kubeflow(cfg, args.output, STAGES[-1])


def _compile_kubeflow(cfg: Config, output: str, through: str) -> int:
    from pipeline import runners

    path = runners.compile_kubeflow(cfg, output, through=through)
    print(f"Kubeflow Pipelines v2 spec: {path} (image {cfg.run.image})")
    print(
        "submit it with the KFP client or the Kubeflow/Vertex AI Pipelines UI; "
        "build the image from ./Dockerfile"
    )
    return 0
