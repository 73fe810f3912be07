"""A non-editable install carries every module, config and shipped checkpoint."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_contains_package_configs_and_assets(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "grpo_lightning").rglob("*.py")}
    expected |= {"grpo_lightning/conf/" + str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "grpo_lightning" / "assets").rglob("*") if p.is_file()}
    missing = sorted(expected - names)
    assert not missing, f"missing from the wheel (add the subpackage to pyproject.toml): {missing}"
