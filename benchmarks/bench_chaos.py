"""Kill ``eventpipe run`` at seeded moments in every stage; report what survived and what it cost.

One clean run of the tiny pipeline (``fixtures.tiny_run``) gives each stage's duration and the
ingest counts. Then, per round, a fresh workdir: one SIGKILL per stage (a seeded fraction into
the stage, of the process group or of the pipeline process alone), each run resuming the last
one's workdir, and a final run that must be blessed with the clean run's counts. After every
kill: ML Metadata opens, no process of the run lives on, no half release is visible (also
watched while the runs are alive), and the next run reuses every stage that had finished.

Recovery is the next run's time to get through the killed stage (process start, cached stages,
the cut stage redone), beside the clean run's time to get there from nothing.

    make bench-chaos                         # 2 rounds, about 25 minutes on 2 cores
    make bench-chaos ARGS="--rounds 1 --seed 7"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from contract import source  # noqa: E402
from fixtures import chaos  # noqa: E402
from fixtures.tiny_run import TINY, TINY_EVENTS  # noqa: E402
from simulator.writer import generate  # noqa: E402

RUN_TIMEOUT_S = 1800


def _command(events: str, workdir: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", "--data", events, "--workdir", workdir, *TINY]


def _through(result: chaos.RunResult, node: str) -> float | None:
    """When ``result`` got through ``node`` (its done/cached line), seconds since it started."""
    ends = [s.at_s for s in result.stages if s.node == node and s.what in ("done", "cached")]
    return ends[-1] if ends else None


def _kill_row(
    killed: chaos.RunResult, nxt: chaos.RunResult, clean: chaos.RunResult, problems: list[str]
) -> dict:
    stage = killed.killed_in or killed.moment.stage
    return {
        "moment": f"{killed.moment.stage}+{killed.moment.fraction:.0%}",
        "mode": killed.moment.mode,
        "killed_in": killed.killed_in or "(between stages)",
        "killed_at_s": round(killed.killed_at_s or 0.0, 1),
        "strays": killed.strays,
        "problems": problems + chaos.resume_problems(killed, nxt),
        "recovered_s": _through(nxt, stage),
        "clean_s": _through(clean, stage),
        "resumed_teacher_at": killed.resume_step or None,
    }


def _round(events: str, workdir: str, clean: chaos.RunResult, durations: dict, seed: int, log: str) -> dict:
    cmd, env = _command(events, workdir), source.child_env()
    moments = chaos.plan(durations, len(durations), seed)
    runs: list[chaos.RunResult] = []
    rows, problems = [], []
    with chaos.ReleaseWatcher(workdir) as watcher:
        for moment in moments:
            run = chaos.run_once(cmd, ROOT, env, log, timeout=RUN_TIMEOUT_S, moment=moment,
                                 duration=durations[moment.stage], workdir=workdir)  # fmt: skip
            if run.killed_at_s is None:
                problems.append(f"{moment}: the run ended before the moment (exit {run.returncode})")
                continue
            found = chaos.metadata_problems(workdir) + chaos.release_problems(workdir)
            found += chaos.reuse_problems(runs, run)
            runs.append(run)
            rows.append((run, found))
            print(f"  kill {len(runs):2d}: {moment.stage:<18} +{moment.fraction:4.0%} {moment.mode:<6} "
                  f"-> in {run.killed_in or '-':<18} at {run.killed_at_s:6.1f} s"
                  f"{'  PROBLEMS: ' + '; '.join(found + run.strays) if found or run.strays else ''}",
                  flush=True)  # fmt: skip
        final = chaos.run_once(cmd, ROOT, env, log, timeout=RUN_TIMEOUT_S)
    table = [
        _kill_row(run, nxt, clean, found) for (run, found), nxt in zip(rows, [*runs[1:], final], strict=True)
    ]
    problems += chaos.reuse_problems(runs, final)
    report = _read_json(os.path.join(workdir, "report.json"))
    return {
        "kills": table,
        "final": {
            "returncode": final.returncode,
            "seconds": round(final.seconds, 1),
            "blessed": (report.get("release") or {}).get("blessed"),
            "events": {k: (report.get("events") or {}).get(k) for k in ("read", "accepted", "rejected")},
        },
        "watched": watcher.looks,
        "half_releases": watcher.problems,
        "problems": problems,
    }


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _summary(rounds: list[dict], clean_events: dict) -> dict:
    kills = [k for r in rounds for k in r["kills"]]
    by_stage: dict[str, int] = {}
    for k in kills:
        by_stage[k["killed_in"]] = by_stage.get(k["killed_in"], 0) + 1
    timed = [k for k in kills if k["recovered_s"] is not None and k["clean_s"] is not None]
    failed = [p for r in rounds for p in r["problems"] + r["half_releases"]]
    failed += [p for k in kills for p in k["problems"] + k["strays"]]
    failed += [f"final run: {r['final']}" for r in rounds
               if r["final"]["returncode"] != 0 or not r["final"]["blessed"]
               or r["final"]["events"] != clean_events]  # fmt: skip
    return {
        "kills": len(kills),
        "survived": sum(1 for k in kills if not (k["problems"] or k["strays"])),
        "by_stage": by_stage,
        "modes": {m: sum(k["mode"] == m for k in kills) for m in chaos.KILL_MODES},
        "recovery_s": {
            "median": statistics.median(k["recovered_s"] for k in timed),
            "max": max(k["recovered_s"] for k in timed),
            "from_scratch_median": statistics.median(k["clean_s"] for k in timed),
        }
        if timed
        else None,
        "failures": failed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="fresh workdirs, one kill per stage each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "chaos.json"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="eventpipe-chaos-")
    events, log = os.path.join(scratch, "events"), os.path.join(scratch, "runs.log")
    started = time.monotonic()
    try:
        generate(events, TINY_EVENTS, workers=1, progress=False, preview=False)
        chaos.add_bad_events(events)  # so that the counts compared include quarantined events
        clean_dir = os.path.join(scratch, "clean")
        print("clean run ...", flush=True)
        clean = chaos.run_once(
            _command(events, clean_dir), ROOT, source.child_env(), log, timeout=RUN_TIMEOUT_S
        )
        if clean.returncode != 0:
            args.keep = True  # the log is the only account of what went wrong
            print(
                f"the clean run failed (exit {clean.returncode}); see {log}\n{clean.stdout[-3000:]}",
                file=sys.stderr,
            )
            return 1
        durations = chaos.stage_durations(clean.stdout)
        clean_events = {k: _read_json(os.path.join(clean_dir, "report.json"))["events"][k]
                        for k in ("read", "accepted", "rejected")}  # fmt: skip
        print(f"clean run {clean.seconds:.0f} s, {len(durations)} stages, events {clean_events}", flush=True)
        rounds = []
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} (seed {args.seed + r})", flush=True)
            rounds.append(
                _round(events, os.path.join(scratch, f"round-{r}"), clean, durations, args.seed + r, log)
            )
        summary = _summary(rounds, clean_events)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    result = {"seed": args.seed, "clean_seconds": round(clean.seconds, 1), "stage_seconds": durations,
              "rounds": rounds, "summary": summary,
              "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    _print(result, args.out)
    return 1 if summary["failures"] else 0


def _print(result: dict, out: str) -> None:
    s = result["summary"]
    print(f"\nkills survived   {s['survived']}/{s['kills']} ({s['modes']['group']} of the process group, "
          f"{s['modes']['leader']} of the pipeline process alone)")  # fmt: skip
    print("killed in        " + ", ".join(f"{stage} {n}" for stage, n in s["by_stage"].items()))
    if s["recovery_s"]:
        r = s["recovery_s"]
        print(
            f"recovery         the next run got through the killed stage in {r['median']:.1f} s "
            f"(median; max {r['max']:.1f} s); from a clean start: {r['from_scratch_median']:.1f} s"
        )
    finals = [r["final"] for r in result["rounds"]]
    print("final runs       " + ", ".join(f"exit {f['returncode']}, "
                                          f"{'blessed' if f['blessed'] else 'NOT blessed'}, "
                                          f"{f['seconds']:.0f} s" for f in finals))  # fmt: skip
    half = [p for r in result["rounds"] for p in r["half_releases"]]
    looks = sum(r["watched"] for r in result["rounds"])
    print(f"half releases    {len(half)} seen in {looks} looks while the runs were alive")
    print(("FAILURES:\n  " + "\n  ".join(s["failures"])) if s["failures"] else "every kill survived")
    print(f"written          {out} ({result['seconds']:.0f} s in all)")


if __name__ == "__main__":
    sys.exit(main())
