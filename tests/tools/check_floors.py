"""Run the fidelity tests with every dependency at the floor pyproject.toml declares.

    python tests/tools/check_floors.py                         # all floors, temporary venv, removed after
    python tests/tools/check_floors.py --pin numpy==1.26.4     # also pin an unfloored dependency
    python tests/tools/check_floors.py --free timm --keep      # leave one free; keep the venv to poke at

Reads ``[project].dependencies``: every ``name>=X`` becomes the constraint ``name==X``
(``--pin name==Y`` replaces or adds one, ``--free name`` drops one). Copies the working tree
(tracked and untracked, not ignored files) to a temporary folder, creates a virtual
environment there (``python -m venv``), installs ``.[test]`` under those constraints, checks
that pip installed exactly the pinned versions, and runs the test groups of ``TEST_GROUPS``
in it. Exit status: 0 when every group passed, 1 when a test failed, 2 when the environment
could not be built (the pip log says which floor cannot be installed). ``--report`` writes the
pins, the installed versions and each group's counts as JSON. See docs/dependencies.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, test paths, -k expression): the tests whose results depend on the pinned libraries.
TEST_GROUPS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("open_clip fidelity", ("tests/test_models.py", "tests/test_text.py", "tests/test_floors.py"), None),
    ("mmseg metric and datasets, hydra eval, Pillow readers", ("tests/test_eval.py",), None),
    ("timm teachers and targets, hydra train", ("tests/test_train.py", "tests/test_target.py"), None),
    ("scipy corruptions", ("tests/test_corruptions.py",), None),
    ("Pillow and matplotlib figures", ("tests/test_demo.py",), None),
)

# Reported with their installed versions besides the declared dependencies (not pinned unless --pin).
ALSO_REPORTED = ("opencv-python", "safetensors", "huggingface-hub", "pytest", "setuptools")

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*(;.*)?$")


class FloorError(Exception):
    """The floor environment could not be built or checked."""


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_dependencies(pyproject: str) -> dict[str, str | None]:
    """``[project].dependencies`` of ``pyproject``: canonical name -> floor (``>=X``) or None."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(pyproject, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    out: dict[str, str | None] = {}
    for dep in deps:
        m = _REQ.match(dep)
        if m is None:
            raise FloorError(f"{pyproject}: cannot read the requirement '{dep}'")
        floors = [s.strip()[2:].strip() for s in m.group(3).split(",") if s.strip().startswith(">=")]
        out[canonical(m.group(1))] = floors[0] if floors else None
    return out


def release(version: str) -> tuple[int, ...]:
    """``2.13.0+cpu`` -> (2, 13): the release numbers without trailing zeros or local label."""
    m = re.match(r"\d+(\.\d+)*", version)
    if m is None:
        raise FloorError(f"not a version: {version}")
    parts = [int(p) for p in m.group(0).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def pins(floors: dict[str, str | None], extra: list[str], free: list[str]) -> dict[str, str]:
    """name -> exact version: the declared floors, then ``--pin`` (name==version), less ``--free``."""
    out = {name: v for name, v in floors.items() if v is not None}
    for item in extra:
        name, sep, version = item.partition("==")
        if not sep or not version:
            raise FloorError(f"--pin {item}: expected name==version")
        out[canonical(name)] = version.strip()
    for name in free:
        out.pop(canonical(name), None)
    return out


def copy_tree(src: str, dst: str) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored files) into ``dst``."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=src, check=True, capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = None
    if listed is None:  # not a git checkout: everything but the usual build outputs
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                                                "outputs", "runs", "data", ".*_cache"))
        return
    for rel in filter(None, listed):
        path = os.path.join(src, rel)
        if not os.path.isfile(path):  # deleted in the work tree, or a submodule
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(path, os.path.join(dst, rel))


def run(cmd: list[str], log: str, **kw) -> int:
    """Run ``cmd``, appending its output to ``log`` and echoing it; its exit status."""
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
        return proc.wait()


def installed_versions(python: str, names: list[str]) -> dict[str, str | None]:
    code = ("import json, sys, importlib.metadata as m\n"
            "def v(n):\n"
            "    try: return m.version(n)\n"
            "    except m.PackageNotFoundError: return None\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    out = subprocess.run([python, "-c", code, *names], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def junit_counts(path: str) -> dict[str, float]:
    """tests, failures, errors, skipped and seconds of a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    keys = ("tests", "failures", "errors", "skipped")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}
    counts["seconds"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pin", action="append", default=[], metavar="NAME==VERSION",
                   help="pin a dependency to VERSION instead of its declared floor (repeatable)")
    p.add_argument("--free", action="append", default=[], metavar="NAME",
                   help="leave a declared dependency unpinned (repeatable)")
    p.add_argument("--python", default=sys.executable, help="interpreter the venv is made from (default: this one)")
    p.add_argument("--workdir", help="folder for the copy, the venv and the logs (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (default: removed when all passed)")
    p.add_argument("--report", help="write pins, installed versions and per-group counts as JSON here")
    p.add_argument("--dry-run", action="store_true", help="print the constraints and stop")
    args = p.parse_args(argv)

    start = time.monotonic()
    try:
        declared = read_dependencies(os.path.join(ROOT, "pyproject.toml"))
        pinned = pins(declared, args.pin, args.free)
    except (FloorError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    constraints = "".join(f"{name}=={v}\n" for name, v in sorted(pinned.items()))
    print("constraints:\n" + constraints, end="", flush=True)
    unpinned = sorted(n for n in declared if n not in pinned)
    if unpinned:
        print("no floor (newest pip finds): " + ", ".join(unpinned))
    if args.dry_run:
        return 0

    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="clip_dinoiser_floors_")
    os.makedirs(work, exist_ok=True)
    src, venv, log = os.path.join(work, "src"), os.path.join(work, "venv"), os.path.join(work, "log.txt")
    report: dict = {"pins": pinned, "unpinned": unpinned, "python": None, "installed": {}, "groups": [],
                    "work": work}
    status = 2
    try:
        if os.path.exists(src):
            shutil.rmtree(src)
        copy_tree(ROOT, src)
        with open(os.path.join(work, "constraints.txt"), "w") as f:
            f.write(constraints)
        python = os.path.join(venv, "bin", "python")
        if not os.path.exists(python) and run([args.python, "-m", "venv", venv], log) != 0:
            raise FloorError(f"cannot create a venv with {args.python}")
        t0 = time.monotonic()
        rc = run([python, "-m", "pip", "install", "--progress-bar", "off", "-c", os.path.join(work, "constraints.txt"),
                  f"{src}[test]"], log)
        report["install_seconds"] = round(time.monotonic() - t0, 1)
        if rc != 0:
            raise FloorError(f"pip could not install the floors (see {log})")
        report["python"] = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                          check=True, capture_output=True, text=True).stdout.strip()
        names = sorted({*declared, *pinned, *map(canonical, ALSO_REPORTED)})
        report["installed"] = installed = installed_versions(python, names)
        wrong = {n: (v, installed.get(n)) for n, v in pinned.items()
                 if installed.get(n) is None or release(installed[n]) != release(v)}
        if wrong:
            raise FloorError("not installed at the pinned version: "
                             + ", ".join(f"{n} {got} (pinned {want})" for n, (want, got) in wrong.items()))
        env = {k: v for k, v in os.environ.items() if k not in ("CLIP_DINOISER_FLOORS", "PYTHONPATH")}
        status = 0
        for i, (name, paths, expr) in enumerate(TEST_GROUPS):
            xml = os.path.join(work, f"junit_{i}.xml")
            cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *paths]
            if expr:
                cmd += ["-k", expr]
            rc = run(cmd, log, cwd=src, env=env)
            counts = junit_counts(xml) if os.path.exists(xml) else {}
            report["groups"].append({"name": name, "paths": list(paths), "k": expr, "returncode": rc, **counts})
            if rc != 0:
                status = 1
    except FloorError as e:
        print(f"error: {e}", file=sys.stderr)
        report["error"] = str(e)
    finally:
        report["seconds"] = round(time.monotonic() - start, 1)
        report["status"] = status
        if args.report:
            with open(args.report, "w") as f:
                json.dump(report, f, indent=2)
        if status == 0 and not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")

    print("\ninstalled: " + ", ".join(f"{n} {v}" for n, v in sorted(report["installed"].items()) if v))
    for g in report["groups"]:
        print(f"{g['name']}: {g.get('passed', '?')} passed, {g.get('failures', '?')} failed, "
              f"{g.get('errors', '?')} errors, {g.get('skipped', '?')} skipped in {g.get('seconds', '?')} s")
    print(f"floors {'OK' if status == 0 else 'FAILED'} in {report['seconds']:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
