"""The pinned environment: requirements.txt and environment.yml list the same packages."""

import re

from tests.conftest import ROOT


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        match = re.match(r"^\s*(?:-\s+)?([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_requirements_and_environment_yml_agree():
    req = pins((ROOT / "requirements.txt").read_text())
    env = pins((ROOT / "environment.yml").read_text())
    assert req == env
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"
    for name in ("timm", "transformers", "datasets", "pandas", "matplotlib", "tqdm", "tensorboard"):
        assert name in req, name
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_every_pin_is_exact():
    for name in ("requirements.txt", "requirements-nodeps.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                assert "==" in line, line


def test_makefile_installs_both_lists_and_environment_yml_mentions_the_second():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -r requirements.txt" in makefile
    assert "pip install --no-deps -r requirements-nodeps.txt" in makefile
    assert "requirements-nodeps.txt" in (ROOT / "environment.yml").read_text()
