"""The product as a stranger meets it: the docs' links and commands, the Space's own files, and a wheel installed
into a fresh virtual environment that merges the demo from another folder."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
HISTORY = re.compile(r"\b(session|sessions) \d|\bissue \d|\bthis session\b|\bearlier session\b", re.IGNORECASE)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_page_speaks_of_the_projects_work_history(page):
    found = [line.strip()[:120] for line in page.read_text().splitlines() if HISTORY.search(line)]
    assert not found, found


def readme_commands() -> list[list[str]]:
    blocks = re.findall(r"^```bash\n(.*?)^```", (REPO / "README.md").read_text(), flags=re.DOTALL | re.MULTILINE)
    commands = []
    for line in "\n".join(blocks).splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("#"):
            continue
        for part in re.split(r"&&", line):
            words = shlex.split(part)
            if words and words[0] in ("python", "commerge"):
                commands.append(words)
    return commands


def test_readme_commands_name_files_and_subcommands_that_exist():
    from commerge_ui.cli import build_parser

    commands = readme_commands()
    assert any(c[0] == "commerge" for c in commands) and any(c[0] == "python" for c in commands)
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    for words in commands:
        if words[0] == "commerge":
            assert words[1] in subcommands, words
        elif words[1] == "-m":
            assert words[2] in ("pytest",) or (REPO / words[2].replace(".", "/")).exists(), words
        else:
            assert (REPO / words[1]).is_file(), words


def test_the_spaces_files_agree_with_the_package():
    """The front matter's Gradio is one the package accepts; requirements.txt (what a Space installs) names
    every runtime and app dependency of pyproject.toml with the same bounds or none."""
    import tomllib

    front = yaml.safe_load((REPO / "README.md").read_text().split("---")[1])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    app_deps = project["optional-dependencies"]["app"]
    gradio = next(d for d in app_deps if d.startswith("gradio"))
    low, high = re.findall(r">=([\d.]+)", gradio)[0], re.findall(r"<([\d.]+)", gradio)[0]
    version = tuple(int(x) for x in front["sdk_version"].split("."))
    assert tuple(int(x) for x in low.split(".")) <= version < tuple(int(x) for x in high.split(".")) + (0,)
    assert front["app_file"] == "app.py" and (REPO / "app.py").is_file()
    required = {re.split(r"[<>=!~ ]", r.strip())[0].lower(): r.strip()
                for r in (REPO / "requirements.txt").read_text().splitlines() if r.strip() and not r.startswith("#")}
    for dep in [*project["dependencies"], *app_deps]:
        name = re.split(r"[<>=!~ ]", dep)[0].lower()
        if name == "gradio":
            continue  # the Space's own sdk_version installs it
        assert name in required, f"requirements.txt lacks {dep}"
        bound = required[name][len(name):]
        assert bound in ("", dep[len(name):]) or dep[len(name):].startswith(bound), (required[name], dep)


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_merges_the_demo_from_anywhere(tmp_path):
    """`pip install .` (not editable): the demo's data and expert deltas travel inside the package; the CLI,
    the library and the app's page work from a folder that is not the checkout."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("commerge_ui-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies from this interpreter's site-packages (a path, not a site dir: its editable install of
    # commerge_ui is not loaded), the package itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                                str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], cwd=elsewhere, capture_output=True, text=True, timeout=900)

    where = run("-c", "import commerge_ui, commerge_ui.demo as d; print(commerge_ui.__file__); print(d.DEMO_CONFIG)")
    assert where.returncode == 0, where.stderr[-2000:]
    package, config = where.stdout.split()
    assert package.startswith(str(site)) and config.startswith(str(site)) and Path(config).is_file()
    assert run("-m", "commerge_ui.cli", "--version").stdout.startswith("commerge 0.")
    small = yaml.safe_load(Path(config).read_text())
    small["methods"], small["experts"] = ["com", "average"], small["experts"][:2]
    small["options"].update(calibration_samples=8, evaluation_samples=20, max_length=32)
    for expert in small["experts"]:  # the demo config's relative paths, made absolute (as load_config does)
        for key in ("model", "calibration", "evaluation"):
            expert[key] = str((Path(config).parent / expert[key]).resolve())
    small["base"] = str((Path(config).parent / small["base"]).resolve())
    (elsewhere / "small.yaml").write_text(yaml.safe_dump(small))
    merged = run("-m", "commerge_ui.cli", "merge", "small.yaml", "--out", "out")
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert (elsewhere / "out" / "report.json").is_file() and (elsewhere / "out" / "com" / "config.json").is_file()
    page = run("-c", "from commerge_ui.ui import build_app; app = build_app(); print(type(app).__name__)")
    assert page.returncode == 0 and page.stdout.strip() == "Blocks", page.stderr[-2000:]


def test_a_merged_models_card_names_the_licences_it_inherits(tmp_path):
    from commerge_ui.export import model_card, model_licence

    for name, licence in (("base", "mit"), ("a", "mit"), ("b", None)):
        (tmp_path / name).mkdir()
        front = f"---\nlicense: {licence}\ntags: [x]\n---\n" if licence else "# no front matter\n"
        (tmp_path / name / "README.md").write_text(front + "A model.\n")
    licences = {ref: model_licence(tmp_path / ref) for ref in ("base", "a", "b")}
    assert licences == {"base": "mit", "a": "mit", "b": None}
    card = model_card("base", {"t1": "a", "t2": "b"}, "com", "Chain of Merges", {}, {}, {}, "accuracy", "",
                      licences)
    assert "- `base`: mit" in card and "- `b`: not declared in its card" in card and "Apache License 2.0" in card
    assert "license: mit" not in card.split("---")[1]  # not every licence is known: no single one is claimed
    card = model_card("base", {"t1": "a"}, "com", "Chain of Merges", {}, {}, {}, "accuracy", "",
                      {"base": "mit", "a": "mit"})
    assert "license: mit" in card.split("---")[1]
