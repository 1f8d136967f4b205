"""UML with the xstate shim (stock/xstate_shim.c) keeps each guest thread's AVX-512 registers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def test_two_threads_keep_their_avx512_state(tmp_path):
    exe = tmp_path / "xstate_check"
    src = Path(__file__).with_name("xstate_check.c")
    subprocess.run(["gcc", "-O1", "-pthread", "-o", exe, src], check=True, timeout=120)
    done = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    if done.returncode == 77:
        pytest.skip("this CPU has no AVX-512F")
    assert done.returncode == 0, done.stdout + done.stderr
    words = done.stdout.split()
    assert words[1:3] == ["0", "0"], done.stdout
    assert min(int(words[-2]), int(words[-1])) > 100, f"threads did not interleave: {done.stdout}"
