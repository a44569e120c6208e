"""lib.sh's vllm branch: what real vLLM needs on its command line (runs bash, hence e2e)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
LIB_SH = Path(__file__).resolve().parents[2] / "harness" / "stack" / "scripts" / "lib.sh"


# -- render endpoints on real vLLM -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "flag"),
    [
        ("0.29.0", ""),
        ("0.30.0", "--enable-scale-out"),
        ("0.33.1", "--enable-scale-out"),
        ("v0.33.0rc1", "--enable-scale-out"),
        ("0.30.0.dev12+gabc", "--enable-scale-out"),
        ("1.0.0", "--enable-scale-out"),
        ("", ""),
    ],
)
def test_lib_sh_opts_into_render_from_vllm_0_30(version: str, flag: str) -> None:
    """v0.30 made scale-out (render) endpoints opt-in through ``--enable-scale-out`` (vLLM PR #55176, replacing
    ``VLLM_ENABLE_SCALE_OUT_ENDPOINTS`` of PR #54579)."""
    out = subprocess.run(
        ["bash", "-c", f'source "{LIB_SH}" >/dev/null 2>&1; vllm_scale_out_flag "$1"', "_", version],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HARNESS_LOG_DIR": "/tmp"},
    )
    assert out.stdout.strip() == flag
