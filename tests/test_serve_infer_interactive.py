"""``libra infer --interactive``: follow-up questions about the same images, answered in the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import CXR, FIXTURES, REPO


def test_interactive_follow_ups_over_stdin() -> None:
    expected = json.loads((FIXTURES / "expected" / "tiny-libra-tac.json").read_text())["greedy"]["returned_text"]
    cmd = [sys.executable, "-m", "libra_cli", "infer", str(CXR / "current.jpg"), str(CXR / "prior.jpg"),
           "-m", str(FIXTURES / "tiny-libra-tac"), "--max-new-tokens", "8", "--interactive"]
    # two follow-ups, then end of input (Ctrl-D) ends the session
    out = subprocess.run(cmd, input="Is the heart enlarged?\nAny change since the prior?\n", capture_output=True,
                         text=True, timeout=240, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert expected.startswith(lines[0]) and len(lines[0]) > 5  # the first report: greedy, as the original
    answers = [ln.split("ASSISTANT: ", 1)[1] for ln in lines[1:] if "ASSISTANT: " in ln]
    assert len(answers) == 2 and all(a.strip() for a in answers)
    assert lines[-1].startswith("USER:")  # prompted a third time, then stdin ended
    assert "follow-up questions" in out.stderr and "Traceback" not in out.stderr
