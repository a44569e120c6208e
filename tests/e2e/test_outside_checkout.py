"""The harness outside this checkout: a real wheel, installed non-editable into a fresh venv, used from an empty
directory — the packaged gate suite (``pytest --pyargs harness.gates -m pre_merge``), the CLI, the built-in
profiles and launch scripts as package data, every profile mark registered (``--strict-markers``), and a user's
own test booting a case through the ``mm_stack`` fixture factory.

Offline and fast: the wheel is built without build isolation, installed with ``--no-deps --no-index``, and the
venv borrows this environment's dependencies through a ``.pth`` path entry (a path entry, so the editable
install's finder in that directory is not activated: ``harness`` resolves to the wheel).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

USER_TEST = '''
import httpx

from harness.gate.payloads import single_image, solid_png, data_url


def test_my_router(mm_stack):
    # A degraded control of the built-in profiles: booted here without the controls' xfail.
    stack = mm_stack("mm_agg_router_round_robin_qwen3-vl-2b")
    body = {"model": stack.spec.model, "max_tokens": 8,
            "messages": single_image(data_url(solid_png("green")), "What colour is this image?")}
    r = httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200
    assert "green" in r.json()["choices"][0]["message"]["content"].lower()
    assert len(stack.worker_urls) == 2
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel of this checkout installed (not editable); yields its ``bin`` directory."""
    tmp = tmp_path_factory.mktemp("outside")
    wheels = tmp / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=120,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("mmharness-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )
    (site / "_mmharness_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=120,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    yield venv / "bin"


def run(bin_dir: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HARNESS_"))}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_ships_profiles_scripts_and_runs_the_gates(installed: Path, tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    py = str(installed / "python")
    where = run(installed, empty, py, "-c", "import harness, harness.profiles as p; print(harness.__file__); "
                "print(p.default_profile_dir()); print(p.default_launch_dir())")
    assert where.returncode == 0, where.stderr
    module, profiles, scripts = where.stdout.split()
    assert not module.startswith(str(ROOT)) and "site-packages" in module  # the wheel, not this checkout
    assert {"sim.py", "dynamo.py", "routers.py", "_models.py"} <= {p.name for p in Path(profiles).iterdir()}
    assert {"lib.sh", "agg_router.sh", "dynamo.sh", "url.sh"} <= {p.name for p in Path(scripts).iterdir()}

    helped = run(installed, empty, str(installed / "harness"), "--help")
    assert helped.returncode == 0 and "harness run" in helped.stdout, helped.stderr

    # Every mark any built-in profile uses is registered: --strict-markers and unknown-mark warnings as errors.
    collected = run(installed, empty, py, "-m", "pytest", "--pyargs", "harness.gates", "--collect-only", "-q",
                    "--strict-markers", "-W", "error::pytest.PytestUnknownMarkWarning", "-p", "no:cacheprovider")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert "mm_dynamo_kv_events_qwen3-vl-2b" in collected.stdout and "mm_agg_router_qwen3-vl-2b" in collected.stdout

    gated = run(installed, empty, py, "-m", "pytest", "--pyargs", "harness.gates", "-m", "pre_merge", "-k",
                "mm_agg_router_qwen3-vl-2b and not b64 and not 4w", "-p", "no:cacheprovider", "-q", "-n", "0",
                "--strict-markers")
    assert gated.returncode == 0, gated.stdout[-3000:] + gated.stderr[-3000:]
    assert "1 passed" in gated.stdout
    assert list(empty.iterdir()) == []  # nothing is written into the directory it was run from


def test_users_own_test_boots_a_case_through_the_fixture_factory(installed: Path, tmp_path: Path) -> None:
    project = tmp_path / "user_project"
    project.mkdir()
    (project / "test_mine.py").write_text(USER_TEST)
    result = run(installed, project, str(installed / "python"), "-m", "pytest", "-q", "-n", "0", "-p",
                 "no:cacheprovider", "--strict-markers", "test_mine.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout  # passed, not xfailed/xpassed: the control's xfail is not inherited
