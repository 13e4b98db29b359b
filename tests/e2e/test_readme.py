"""The README's quick start, run verbatim (its `sh` blocks, in order) against a real `shoal devstack`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Process, free_port, shoal_command, wait_for

REPO = Path(__file__).parents[2]
README_URL = "http://127.0.0.1:1234"


def sh_blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", (REPO / "README.md").read_text(), flags=re.S | re.M)


def test_the_quick_start_works_verbatim(tmp_path: Path, docker_engine: Any) -> None:
    blocks = sh_blocks()
    assert len(blocks) >= 6
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "devstack.log"
    with open(log, "wb") as handle:
        devstack = Process(subprocess.Popen(
            shoal_command("devstack", "--port", str(port), "--data-dir", str(tmp_path / "devstack"), "--agents", "2"),
            stdout=handle, stderr=subprocess.STDOUT,
        ), log)
    try:
        wait_for(lambda: f"API: {url}" in devstack.output(), timeout=60, what="the devstack to start")
        work = tmp_path / "work"
        work.mkdir()
        (work / "examples").symlink_to(REPO / "examples")
        script = "set -euo pipefail\n" + "\n".join(blocks).replace(README_URL, url)
        env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        ran = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=300, env=env)
        assert ran.returncode == 0, f"stdout:\n{ran.stdout}\nstderr:\n{ran.stderr}\ndevstack:\n{devstack.output()}"
    finally:
        devstack.stop()
    assert "hello from docker" in ran.stdout
    assert "2 4 23 /inputs/hello.txt" in ran.stdout
    assert "partition 1 of 2" in ran.stdout
    assert (work / "results" / "outputs" / "counts.txt").read_text().startswith("2 4 23 /inputs/hello.txt\n")
    assert (work / "wasm-results" / "outputs" / "counts.txt").read_text().startswith("2 5 24 /inputs/numbers.txt\n")
    assert '"StateType":"Completed"' in ran.stdout
    assert re.search(r"^j-[0-9a-f-]{36} j-[0-9a-f-]{36}$", ran.stdout, flags=re.M)  # a batch of two, in one request
    assert "placed again" in ran.stdout and "rerun as version 3" in ran.stdout
    assert "400000 /data/big.bin" in ran.stdout and "sent with curl" in ran.stdout
    assert "word-count" in ran.stdout and re.search(r"\b2\s+9\s+44 words\.txt", ran.stdout)
    assert "hello from flags" in ran.stdout and "hi from the-environment" in ran.stdout
    assert "hello from ci" in ran.stdout and "refused: the token has no read:node" in ran.stdout
    assert "required capability 'read:node'" in ran.stderr
