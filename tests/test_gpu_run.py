"""The GPU script runs end to end on a CPU at toy sizes and writes every section of its JSON."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_runs_every_section_at_toy_sizes(tmp_path):
  out = tmp_path / "gpu_check.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, "launch/gpu_check.py", f"--out={out}", "--tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads(out.read_text())
  sections = saved["sections"]
  assert set(sections) == {"mfu", "paper_sweep", "members", "deterministic"}
  # A section skipped for time, or a shape too large for the device, would show as a non-empty "skipped".
  assert saved["all_checks_passed"] and not any("error" in s or s.get("skipped") for s in sections.values())

  mfu_rows = sections["mfu"]["rows"]
  assert {row["kind"] for row in mfu_rows} == {"segmentation", "classifier"}
  assert all(row["shape"]["dtype"] == "bfloat16" and row["mfu_of_measured_matmul_peak"] > 0 for row in mfu_rows)

  sweep = sections["paper_sweep"]
  assert sweep["steps"] == 4 and sweep["step_s"] > 0 and sweep["memory"]["peak_bytes"] > 0
  assert sweep["projection"]["steps"] > 0 and sweep["projection"]["hours"] > 0

  measured = {(row["strategy"], row["members"]) for section in sections["members"]["sections"]
              for row in section.get("rows", [])}
  assert measured == {(s, k) for s in ("vmap", "map", "unrolled") for k in (2, 3, 4)}
  assert all(check["passed"] for check in sections["members"]["checks"].values())

  deterministic = sections["deterministic"]
  assert deterministic["record"]["deterministic_gpu_ops"] is True
  assert deterministic["same_sweep_json"] and deterministic["same_checkpoint_bytes"]
