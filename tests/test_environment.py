"""environment.yml (for conda users) pins exactly what requirements.txt pins."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"unpinned requirement {line!r}: pin it with =="
        found[name.strip().lower()] = version.strip()
    return found


def test_environment_yml_pins_match_requirements_txt():
    required = pins((REPO / "requirements.txt").read_text().splitlines())
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs one pip: section"
    assert pins(pip_sections[0]) == required
    assert "python=3.11" in environment["dependencies"]
