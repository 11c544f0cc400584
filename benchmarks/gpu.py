"""python -m benchmarks gpu --out DIR: the whole GPU check in one command (`make gpu-check`).

Meant for a bare GPU machine (the project's lent H200: Python 3.12, torch, triton, a compiler, no
network) and for a user's own GPU box. Each stage runs in its own process with a time limit, so a
stage that fails, hangs or crashes the interpreter is recorded and the next one runs:

    install   wheels brought along (gpu-bundle's wheels/), into WORK/site, then the imports the check needs
    build     engine._native with the compiler there
    tests     the `gpu`-marked tests
    kernels   python -m benchmarks kernels   (GroupNorm+SiLU, AdamW+EMA against their baselines)
    train     python -m benchmarks train     (one diffusion and one GAN step: fused, eager, compile)
    decode    python -m benchmarks decode    (cuCIM GPU against CPU decode, when cuCIM is there)
    realism   python -m benchmarks realism   (time-boxed 64 px diffusion on real patches, then eval)

DIR receives few files (the lent machine returns at most 8): gpu-check.json (every stage and
figure), gpu-check.md, gpu-check.log (every stage's output), train-profile.txt and
real-vs-generated.png. Everything else goes to --work (default: DIR.work beside it). The last
thing printed is every figure against its goal.

--dry-run is the same command in tiny sizes on the CPU (Triton's interpreter, torch.compile's
aot_eager backend, a synthetic patch store, engine._native built but not installed): CI runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".gpu-bundle"
# What the check imports beyond the standard library (import name: package), each needed on the machine.
IMPORTS = {"torch": "torch", "triton": "triton", "numpy": "numpy", "scipy": "scipy", "yaml": "pyyaml", "PIL": "pillow",
           "safetensors": "safetensors", "tensorboard": "tensorboard", "tifffile": "tifffile", "pytest": "pytest",
           "zarr": "zarr", "numcodecs": "numcodecs", "donfig": "donfig", "google_crc32c": "google-crc32c",
           "pybind11": "pybind11"}


@dataclass(frozen=True)
class Check:
    out: Path
    work: Path
    bundle: Path
    dry_run: bool
    minutes: float  # the time-boxed training run
    budget_s: float  # the whole check; later stages get what earlier ones left
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)


@dataclass
class Stage:
    name: str
    status: str = "ok"  # ok | failed | timeout | skipped
    seconds: float = 0.0
    reason: str = ""


class Skip(Exception):
    """A stage that cannot run here; the message says why."""


class Failed(Exception):
    """A stage that ran and failed; the message says how."""


# -- running commands -----------------------------------------------------------------------------


def run(check: Check, env: dict, cmd: list[str], limit: float, log_name: str) -> int:
    """Run cmd in the checkout, its output appended to the log; the exit status (124 on timeout)."""
    log = check.out / "gpu-check.log"
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        f.flush()
        # A session of its own, so that a timeout ends its children too (compile workers, DataLoader workers).
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            f.write(f"\n[{log_name}: killed after {limit:.0f} s]\n")
            return 124


def python(check: Check, env: dict, args: list, limit: float, what: str) -> None:
    rc = run(check, env, [sys.executable, *args], limit, what)
    if rc == 124:
        raise TimeoutError(f"{what} ran past its {limit:.0f} s")
    if rc:
        raise Failed(f"{what} exited with status {rc} (see gpu-check.log)")


def suite(check: Check, env: dict, name: str, limit: float, *args) -> dict:
    """python -m benchmarks NAME --out WORK/suites ...; its JSON. The suites write it as they go, so
    a suite that fails or runs out of time still leaves what it measured."""
    dry = ["--dry-run"] if check.dry_run else []
    path = check.work / "suites" / f"{name}.json"
    path.unlink(missing_ok=True)
    try:
        python(check, env, ["-m", "benchmarks", name, "--work", check.work / "bench", "--out", path.parent, *args,
                            *dry],
               limit, f"benchmarks {name}")
    except (TimeoutError, Failed) as e:
        if path.is_file():
            raise type(e)(f"{e}; what it measured before is kept", json.loads(path.read_text())) from e
        raise
    return json.loads(path.read_text())


# -- the stages -----------------------------------------------------------------------------------


def stage_install(check: Check, env: dict, limit: float) -> str:
    wheels = sorted((check.bundle / "wheels").glob("*.whl"))
    said = []
    if not wheels:
        said.append(f"no wheels in {check.bundle / 'wheels'}")
    elif check.dry_run:
        said.append(f"{len(wheels)} wheels not installed (dry run: they are built for the GPU machine's Python)")
    else:
        site = check.work / "site"
        python(check, env, ["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
                            "--target", site, *wheels], limit, "pip install")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        said.append(f"{len(wheels)} wheels installed into {site}")
    probe = ("import importlib.util, json; "
             f"print(json.dumps([m for m in {sorted(IMPORTS)!r} if importlib.util.find_spec(m) is None]))")
    got = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    missing = json.loads(got.stdout or "[]")
    if missing:
        raise Failed("; ".join(said) + f"; missing: {', '.join(IMPORTS[m] for m in missing)} "
                     "(bring them: python -m benchmarks gpu-bundle)")
    return "; ".join(said) + "; every import the check needs is there"


def stage_build(check: Check, env: dict, limit: float) -> str:
    """Build into WORK, then swap it into engine/ in one rename. The dry run only loads what it
    built, leaving the checkout's own build alone, and builds incrementally in build/gpu-check-dry
    (a full build costs 30 to 100 s on 2 cores, most of the dry run)."""
    build = ROOT / "build" / "gpu-check-dry" if check.dry_run else check.work / "build"
    force = [] if check.dry_run else ["--force"]
    python(check, env, ["setup.py", "-q", "build_ext", *force, "-j", str(os.cpu_count() or 1), "-b", build,
                        "-t", build / "tmp"], limit, "build_ext")
    (built,) = (build / "engine").glob("_native*.so")
    load = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('engine._native', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(sorted(n for n in dir(m) if not "
            "n.startswith('_')))")
    python(check, env, ["-c", load, built], 60, "loading the built engine._native")
    if check.dry_run:
        return f"built and loaded {built.name} (dry run: not installed into engine/)"
    tmp = ROOT / "engine" / (built.name + ".new")
    shutil.copy2(built, tmp)
    tmp.replace(ROOT / "engine" / built.name)
    return f"engine/{built.name} built and installed"


def gpu_test_files() -> list[Path]:
    """The test modules with gpu-marked tests (directly, or through tests.support.kernels.DEVICES):
    collecting only these keeps modules that need packages the machine lacks out of the way."""
    marked = re.compile(r"pytest\.mark\.gpu|\bDEVICES\b")
    return sorted(p.relative_to(ROOT) for p in (ROOT / "tests").rglob("test_*.py") if marked.search(p.read_text()))


def stage_tests(check: Check, env: dict, limit: float) -> tuple[str, dict]:
    xml = check.work / "gpu-tests.xml"
    xml.unlink(missing_ok=True)
    rc = run(check, env, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rfEs",
                          "--continue-on-collection-errors", f"--junitxml={xml}", *gpu_test_files()], limit, "pytest")
    if rc == 124:
        raise TimeoutError(f"the gpu tests ran past {limit:.0f} s")
    if not xml.is_file():
        errors = [line for line in (check.out / "gpu-check.log").read_text(errors="replace").splitlines()
                  if "Error" in line]
        raise Failed(f"pytest exited with status {rc} before running a test: "
                     f"{errors[-1].strip() if errors else 'see gpu-check.log'}")
    suites = ET.parse(xml).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    bad = [f"{c.get('classname')}.{c.get('name')}" for s in suites for c in s.iter("testcase")
           if c.find("failure") is not None or c.find("error") is not None]
    summary = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failures", "errors", "skipped"))
    result = {**counts, "not passing": bad}
    if bad or rc not in (0, 5):  # 5: nothing collected (no gpu test selected)
        raise Failed(f"{summary}: {', '.join(bad[:8]) or f'pytest status {rc}'}", result)
    return summary, result


def stage_kernels(check: Check, env: dict, limit: float) -> tuple[str, dict]:
    got = suite(check, env, "kernels", limit)
    return f"{len(got['rows'])} rows", got


def stage_train(check: Check, env: dict, limit: float) -> tuple[str, dict]:
    got = suite(check, env, "train", limit, "--profile", check.out / "train-profile.txt")
    return f"{len(got['rows'])} rows, profile in train-profile.txt", got


def stage_decode(check: Check, env: dict, limit: float) -> tuple[str, dict]:
    has = subprocess.run([sys.executable, "-c", "import cucim"], env=env, capture_output=True,
                         timeout=120).returncode == 0
    if not has:
        raise Skip("cuCIM is not installed (bring it: python -m benchmarks gpu-bundle --cucim)")
    slides = sorted((check.bundle / "slides").glob("*"))
    if not check.dry_run and not slides:  # the dry run writes a synthetic slide (histosynth needs imagecodecs)
        raise Skip(f"no slide in {check.bundle / 'slides'} (bring one: python -m benchmarks gpu-bundle --cucim)")
    got = suite(check, env, "decode", limit, *(["--slide", slides[0]] if slides and not check.dry_run else []))
    return f"{len(got['rows'])} rows", got


def stage_realism(check: Check, env: dict, limit: float) -> tuple[str, dict]:
    store = check.bundle / "he-64.zarr"
    if check.dry_run:
        store = check.work / "synthetic.zarr"
        make_synthetic_store(store, env, check)
    elif not store.is_dir():
        raise Skip(f"no patch store {store} (make it: python -m benchmarks gpu-bundle)")
    reserve = 150 if not check.dry_run else 30  # sampling and evaluation after the time box
    minutes = max(0.0, min(check.minutes, (limit - reserve) / 60))
    got = suite(check, env, "realism", limit, "--patches", store, "--minutes", f"{minutes:.2f}", "--pictures",
                check.out)
    return f"{got.get('steps')} steps in {minutes:.1f} min", got


# name, function, time limit on the GPU machine (s); the dry run gets the same, the budget decides.
STAGES = [("install", stage_install, 120), ("build", stage_build, 180), ("tests", stage_tests, 150),
          ("kernels", stage_kernels, 180), ("train", stage_train, 240), ("decode", stage_decode, 90),
          ("realism", stage_realism, 360)]


def run_stage(check: Check, env: dict, name: str, fn, cap: float) -> tuple[Stage, dict]:
    st, payload = Stage(name), {}
    limit = min(cap, check.left())
    t0 = time.monotonic()
    with (check.out / "gpu-check.log").open("a") as f:
        f.write(f"\n===== {name} (limit {limit:.0f} s) =====\n")
    try:
        if limit < 20:
            raise Skip("the check's time budget is spent (raise --budget-minutes)")
        got = fn(check, env, limit)
        st.reason, payload = got if isinstance(got, tuple) else (got, {})
    except Skip as e:
        st.status, st.reason = "skipped", str(e)
    except (TimeoutError, Failed) as e:
        st.status, st.reason = "timeout" if isinstance(e, TimeoutError) else "failed", str(e.args[0])
        payload = e.args[1] if len(e.args) > 1 else {}
    except Exception as e:  # a bug in the stage itself must not stop the others
        st.status, st.reason = "failed", f"{type(e).__name__}: {e}"
    st.seconds = time.monotonic() - t0
    return st, payload


# -- figures against goals --------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """A figure read from a stage's payload at `key` (a top-level key, or 'row:NAME-PREFIX:COLUMN'),
    with its goal: at least `at_least`, or None to report only."""

    figure: str
    stage: str
    key: str
    at_least: float | None = None


GOALS = [
    Goal("gpu tests passing (of run)", "tests", "passed"),
    Goal("gpu tests failing or erroring", "tests", "failures+errors"),
    Goal("GroupNorm+mod+SiLU fwd+bwd x eager (worst shape)", "kernels", "goal groupnorm x eager >= 2 (worst shape)",
         2.0),
    Goal("GroupNorm+mod+SiLU fwd+bwd x torch.compile (worst shape)", "kernels",
         "goal groupnorm x compile >= 1 (worst shape)", 1.0),
    Goal("GroupNorm fwd+bwd, one UNet's worth, x eager", "kernels", "row:all GroupNorms:x eager"),
    Goal("GroupNorm fwd+bwd, one UNet's worth, x torch.compile", "kernels", "row:all GroupNorms:x compile"),
    Goal("GroupNorm fraction of bandwidth ceiling (worst shape)", "kernels", "groupnorm of ceiling (worst shape)"),
    Goal("copy bandwidth GB/s", "kernels", "copy bandwidth GB/s"),
    Goal("AdamW+EMA x AdamW(fused)+foreach EMA (fp32)", "kernels", "goal AdamW+EMA x baseline >= 1.5 (fp32)", 1.5),
    Goal("diffusion step fused x eager", "train", "diffusion fused x eager", 1.25),
    Goal("diffusion step fused x torch.compile", "train", "diffusion fused x compile"),
    Goal("diffusion step fused images/s", "train", "row:diffusion step:images/s"),
    Goal("GAN step fused x eager", "train", "gan fused x eager"),
    Goal("GAN step fused x torch.compile", "train", "gan fused x compile"),
    Goal("cuCIM GPU decode x CPU decode", "decode", "gpu x cpu"),
    Goal("time-boxed diffusion: steps", "realism", "steps"),
    Goal("time-boxed diffusion: images/s", "realism", "images/s"),
]


def lookup(payload: dict, key: str):
    if key == "failures+errors":
        return payload["failures"] + payload["errors"] if "failures" in payload else None
    if key.startswith("row:"):
        _, prefix, column = key.split(":")
        rows = [r for r in payload.get("rows", []) if r["name"].startswith(prefix)]
        return rows[0].get(column) if rows else None
    return payload.get(key)


def figures(stages: dict[str, Stage], payloads: dict[str, dict]) -> list[dict]:
    out = []
    for g in GOALS:
        value = lookup(payloads.get(g.stage, {}), g.key)
        met = None if g.at_least is None or value is None else value >= g.at_least
        if g.key == "failures+errors" and value is not None:
            met = value == 0
        out.append({"figure": g.figure, "value": value, "goal": f">= {g.at_least:g}" if g.at_least is not None else
                    ("0" if g.key == "failures+errors" else "report"), "met": met,
                    "note": "" if value is not None
                    else f"{g.stage}: {stages[g.stage].status} {stages[g.stage].reason}"[:90]})
    # The realism figures as evaluate() returns them, whatever they are, beside their real-vs-real floor.
    for row in payloads.get("realism", {}).get("rows", []):  # benchmarks.quality's table: metric, value, floor
        floor = row.get("diffusion floor")
        out.append({"figure": f"realism: {row['metric']}", "value": row.get("diffusion"),
                    "goal": f"floor {floor:.4g}" if isinstance(floor, float) else "report", "met": None, "note": ""})
    return out


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def table(stages: list[Stage], figs: list[dict]) -> str:
    lines = ["| stage | status | s | what |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.reason} |" for s in stages]
    lines += ["", "| figure | value | goal | met |", "|---|---|---|---|"]
    lines += [f"| {f['figure']} | {fmt(f['value'])} | {f['goal']} | "
              f"{ {True: 'yes', False: 'NO', None: '-'}[f['met']] }{(' (' + f['note'] + ')') if f['note'] else ''} |"
              for f in figs]
    return "\n".join(lines) + "\n"


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks gpu", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (what CI runs)")
    p.add_argument("--bundle", type=Path, default=BUNDLE,
                   help="what gpu-bundle gathered (wheels/, he-64.zarr, slides/)")
    p.add_argument("--minutes", type=float, default=1.5, help="the time-boxed training run (the budget may shorten it)")
    p.add_argument("--budget-minutes", type=float, default=8.5, help="the whole check; stages past it are skipped")
    p.add_argument("--only", action="append", choices=[s[0] for s in STAGES], help="run only this stage (repeatable)")
    a = p.parse_args(argv)
    out = out.resolve()
    # Beside OUT unless given (not the suites' shared default): a lent machine returns only a few files from OUT.
    work = work.resolve() if work != Path(".bench") else out.with_name(out.name + ".work")
    for d in (out, work):
        d.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.log").write_text("")
    (out / "train-profile.txt").unlink(missing_ok=True)
    check = Check(out, work, a.bundle.resolve(), a.dry_run, 0.05 if a.dry_run else a.minutes, 60 * a.budget_minutes)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HISTOGEN_CACHE=str(work / "cache"))
    if a.dry_run:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")  # the CPU, even on a GPU box
    stages, payloads = [], {}
    for name, fn, cap in STAGES:
        if a.only and name not in a.only:
            continue
        st, payload = run_stage(check, env, name, fn, cap)
        stages.append(st)
        payloads[name] = payload
        print(f"{name:8s} {st.status:8s} {st.seconds:6.0f} s  {st.reason}", flush=True)
        if st.status in ("failed", "timeout"):
            print(tail(out / "gpu-check.log", 12), flush=True)
    figs = figures({s.name: s for s in stages}, payloads) if not a.only else []
    text = table(stages, figs)
    head = f"# make gpu-check{' (dry run: numbers mean nothing)' if a.dry_run else ''}\n\n{machine()}\n\n"
    (out / "gpu-check.md").write_text(head + text + "".join(
        f"\n## {n}\n\n{(work / 'suites' / f'{n}.md').read_text()}"
        for n in payloads if (work / "suites" / f"{n}.md").is_file()))
    (out / "gpu-check.json").write_text(json.dumps({"dry_run": a.dry_run, "machine": machine(),
                                                    "stages": [asdict(s) for s in stages],
                                                    "figures": figs, "payloads": payloads}, indent=1, default=str))
    print("\n" + text, end="")
    return 0 if all(s.status in ("ok", "skipped") for s in stages) else 1


def machine() -> str:
    from benchmarks import report

    return report.machine()


def tail(path: Path, n: int) -> str:
    return "\n".join("    " + line for line in path.read_text(errors="replace").splitlines()[-n:])


def make_synthetic_store(store: Path, env: dict, check: Check) -> None:
    """The dry run's patch store: three small synthetic slides (histosynth), tiled at 32 px."""
    if store.is_dir():
        return
    slides = check.work / "synthetic-slides"
    code = ("import sys, histosynth as s; from pathlib import Path; d = Path(sys.argv[1]); d.mkdir(parents=True, "
            "exist_ok=True)\n"
            "for i in range(3): s.write_tiled_tiff(d / f's{i}.tif', s.SynthSpec(width=768, height=512, seed=i, "
            "mpp=0.5), levels=(1, 4))")
    python(check, env, ["-c", code, slides], 120, "writing synthetic slides")
    python(check, env, ["-m", "engine.tile", "--slides", slides, "--out", store, "--patch-size", "32", "--no-qa",
                        "--quiet"],
           120, "tiling the synthetic slides")
