"""Block hashes agree across processes whatever PYTHONHASHSEED says (starts a Python process, hence e2e)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.mm.hashing import BlockKeyContext, block_hashes
from harness.mm.prompt import MMItem

pytestmark = pytest.mark.e2e


def test_hashes_independent_of_pythonhashseed() -> None:
    """Engine, proxy and event consumer are separate processes; no pinned PYTHONHASHSEED may be needed."""
    code = (
        "import json\n"
        "from harness.mm.hashing import BlockKeyContext, block_hashes\n"
        "from harness.mm.prompt import MMItem\n"
        "ids = list(range(300, 400))\n"
        "print(json.dumps(block_hashes(ids, 16, [MMItem('img', 20, 30)], BlockKeyContext('L', 'S'))))\n"
    )
    expected = block_hashes(list(range(300, 400)), 16, [MMItem("img", 20, 30)], BlockKeyContext("L", "S"))
    env = {**os.environ, "PYTHONHASHSEED": "987654"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == expected
