"""The app served hosted (SPACE_ID set, `python app.py` in its own process) and attacked as a visitor would:
through gradio_client and raw calls on its queue. Every attack must be refused with a message that holds no
server path and no byte of the target, and nothing of the target may reach a file the visitor can download."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from commerge_ui.demo import DEMO_CONFIG, ensure_demo  # noqa: E402
from commerge_ui.ui.handlers import MAX_EXPERTS, defaults_from  # noqa: E402

from conftest import make_base, write_samples  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OWNER_TOKEN = "hf_OWNER_SECRET_TEST"
SECRET = "SECRET-PASSWORD-7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandInHub(http.server.BaseHTTPRequestHandler):
    """Answers every request as the Hub does for a repository it does not have, and records its headers."""

    seen: list[tuple[str, str | None]] = []

    def _answer(self) -> None:
        StandInHub.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps({"error": "Repository not found"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The hosted app in its own process, a stand-in Hub beside it, and server files a visitor must not see."""
    root = tmp_path_factory.mktemp("hosted")
    secrets = root / "secrets"
    secrets.mkdir()
    (secrets / "passwords.txt").write_text(f"{SECRET}\n")
    (secrets / "id_rsa").write_text(f"-----BEGIN KEY----- {SECRET}\n")
    (secrets / ".env").write_text(f"HF_TOKEN={OWNER_TOKEN}\n")
    (secrets / "notes.jsonl").write_text(json.dumps({"api_key": SECRET, "owner": "alice"}) + "\n")
    from PIL import Image
    (secrets / "cat").mkdir()
    Image.new("RGB", (4, 4)).save(secrets / "cat" / "a.png")  # a folder the text readers once accepted
    make_base(secrets / "server-model")

    ensure_demo()  # the demos a hosted instance prepares at start-up (the server itself is started without)
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    server_tmp = root / "server-tmp"
    server_tmp.mkdir()
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GRADIO_", "COMMERGE_"))},
           "SPACE_ID": "someone/commerge", "HF_TOKEN": OWNER_TOKEN, "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}",
           "TMPDIR": str(server_tmp), "GRADIO_TEMP_DIR": str(server_tmp / "gradio"), "COMMERGE_SESSION_TTL_S": "6",
           "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HOME": str(root / "hf-home")}
    log = open(root / "server.log", "w")
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--prepare", "none"], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert process.poll() is None, (root / "server.log").read_text()
            time.sleep(1)
    else:
        process.kill()
        pytest.fail("the hosted app did not start: " + (root / "server.log").read_text()[-2000:])
    yield {"root": root, "secrets": secrets, "url": url, "tmp": server_tmp, "client": Client(url, verbose=False)}
    process.terminate()
    process.wait(20)
    hub.shutdown()


def assert_clean(text: object, server: dict) -> None:
    """No byte of a secret, no server path, no owner token."""
    text = json.dumps(text) if not isinstance(text, str) else text
    for bad in (SECRET, OWNER_TOKEN, "alice", "api_key", str(server["root"]), str(server["tmp"]), str(REPO), "/tmp"):
        assert bad not in text, f"{bad!r} leaked in {text!r}"


def run_config(server: dict, config: dict | None = None, bundle: dict[str, bytes] | None = None):
    """/run_config with a config.yaml (or a bundle zip holding `bundle`'s files), as a visitor uploads it."""
    folder = server["root"] / f"upload-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    if bundle is None:
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(config))
    else:
        path = folder / "bundle.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in bundle.items():
                archive.writestr(name, data)
    return server["client"].predict(handle_file(str(path)), "cpu", "float32", api_name="/run_config")


def one_expert(calibration: str, base: str = "someorg/base", model: str = "someorg/expert") -> dict:
    return {"base": base, "experts": [{"name": "movies", "model": model, "calibration": calibration}],
            "methods": ["average"]}


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "folder", "jsonl"])
def test_a_config_cannot_name_a_server_file(server, kind):
    secrets = server["secrets"]
    calibration = {"absolute": str(secrets / "passwords.txt"),
                   "dotdot": "../" * 12 + str(secrets / "passwords.txt").lstrip("/"),
                   "folder": str(secrets),
                   "jsonl": str(secrets / "notes.jsonl")}[kind]
    status, report = run_config(server, one_expert(calibration))
    assert status.startswith("✘") and report is None
    assert "calibration samples" in status and "server files cannot be read" in status, status
    assert_clean(status, server)


def test_a_bundle_cannot_point_outside_itself_and_its_download_holds_only_its_own_files(server):
    secrets = server["secrets"]
    config = one_expert(str(secrets / "passwords.txt"))
    status, _ = run_config(server, bundle={"config.yaml": yaml.safe_dump(config).encode(),
                                           "samples/movies.txt": b"a line\n"})
    assert status.startswith("✘") and "server files cannot be read" in status
    assert_clean(status, server)
    # a symbolic link or '..' entry inside the zip is refused as the archive is read
    path = server["root"] / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("samples/link.txt")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, str(secrets / "passwords.txt"))
        archive.writestr("config.yaml", yaml.safe_dump(one_expert("samples/link.txt")))
    status, _ = server["client"].predict(handle_file(str(path)), "cpu", "float32", api_name="/run_config")
    assert status.startswith("✘") and "symbolic link" in status
    assert_clean(status, server)


def test_another_sessions_files_cannot_be_named(server):
    # another visitor's session folder, with a file in it (what their upload or merged model would be)
    other = next(server["tmp"].glob("commerge-*"), None) or (server["tmp"] / "commerge-x")
    victim = other / "session-victim"
    victim.mkdir(parents=True, exist_ok=True)
    (victim / "their-upload.txt").write_text(f"{SECRET}\n")
    status, _ = run_config(server, one_expert(str(victim / "their-upload.txt")))
    assert status.startswith("✘") and "server files cannot be read" in status
    assert_clean(status, server)


def test_a_server_model_folder_is_refused_on_the_form_and_in_a_config(server):
    model = str(server["secrets"] / "server-model")
    status, _ = run_config(server, one_expert("samples/x.txt", base=model, model=model))
    assert status.startswith("✘") and "server folders cannot be read" in status
    assert_clean(status, server)
    out = run_form(server, base=model, model=model)
    assert out[1].startswith("✘") and "server folders cannot be read" in out[1], out[1]
    assert_clean(out[1], server)
    # and nothing was merged that /zip_model could hand out
    assert not list(server["tmp"].glob("commerge-*/session-*/run"))


def run_form(server: dict, base: str, model: str, calibration: Path | None = None, samples: int = 16):
    calibration = calibration or write_samples(server["root"] / f"cal-{uuid.uuid4().hex[:6]}.txt", 8, 0, False)
    names = ["movies"] + [""] * (MAX_EXPERTS - 1)
    models = [model] + [None] * (MAX_EXPERTS - 1)
    files = [handle_file(str(calibration))] + [None] * (MAX_EXPERTS - 1)
    return server["client"].predict(base, 1, *names, *models, *files, *([None] * MAX_EXPERTS), *([""] * MAX_EXPERTS),
                                    ["average"], 0.9, 0.3, samples, 16, 0, "cpu", "float32", api_name="/run")


def test_zip_bomb_and_entry_flood_are_refused_before_they_fill_the_disk(server):
    bomb = server["root"] / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.yaml", yaml.safe_dump(one_expert("samples/zeros.txt")))
        with archive.open("samples/zeros.txt", "w", force_zip64=True) as member:
            for _ in range(300):
                member.write(bytes(2**20))
    assert bomb.stat().st_size < 2 * 2**20
    status, _ = server["client"].predict(handle_file(str(bomb)), "cpu", "float32", api_name="/run_config")
    assert status.startswith("✘") and "unpacks to more than" in status, status
    flood = server["root"] / "flood.zip"
    with zipfile.ZipFile(flood, "w") as archive:
        archive.writestr("config.yaml", yaml.safe_dump(one_expert("samples/0.txt")))
        for k in range(50_000):
            archive.writestr(f"samples/{k}.txt", "")
    status, _ = server["client"].predict(handle_file(str(flood)), "cpu", "float32", api_name="/run_config")
    assert status.startswith("✘") and "entries, more than" in status, status
    for text in (status,):
        assert_clean(text, server)
    unpacked = sum(p.stat().st_size for p in server["tmp"].rglob("*") if p.is_file() and "gradio" not in p.parts)
    assert unpacked < 50 * 2**20  # nothing of the bomb stayed on disk


def test_out_of_bound_options_and_an_oversized_sample_file_are_refused_by_name(server):
    config = {"base": "someorg/base", "experts": [{"name": f"e{k}", "model": "someorg/e", "calibration": "c.txt"}
                                                  for k in range(40)],
              "methods": ["average"], "options": {"calibration_samples": 10**9, "max_length": 9002,
                                                  "batch_size": 10**9, "merge_memory_gb": 1e9}}
    status, _ = run_config(server, config)
    for words in ("experts 40 is above the hosted limit of 8", "calibration_samples 1e+09 is above",
                  "max_length 9002 is above", "batch_size 1e+09 is above", "merge_memory_gb 1e+09 is above"):
        assert words in status, status
    big = server["root"] / "big.txt"
    with open(big, "w") as stream:
        line = "a sample line of text that repeats\n"
        stream.write(line * (33 * 2**20 // len(line) + 1))
    out = run_form(server, "someorg/base", "someorg/expert", calibration=big)
    assert out[1].startswith("✘") and "larger than the 32 MiB" in out[1], out[1]
    assert_clean(out[1], server)
    # hosted, the page's sliders end at the limits, and Gradio itself refuses a value beyond them
    with pytest.raises(gradio_client.exceptions.AppError, match="greater than maximum value 256"):
        run_form(server, "someorg/base", "someorg/expert", samples=100_000)


def test_hub_calls_for_a_visitors_ids_never_carry_the_owners_token(server):
    StandInHub.seen.clear()
    out = run_form(server, "someorg/owners-private-model", "someorg/owners-private-expert")
    assert out[1].startswith("✘") and "no such model on the Hub" in out[1], out[1]
    assert StandInHub.seen, "the stand-in Hub was never asked: the test would prove nothing"
    assert all(auth is None or OWNER_TOKEN not in auth for _, auth in StandInHub.seen), StandInHub.seen
    assert_clean(out[1], server)


def queue_call(url: str, fn_index: int, data: list, trigger_id: int | None = None) -> list:
    """A raw call on the queue, as the page makes it (queue/join, then the event stream)."""
    session = uuid.uuid4().hex[:10]
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                       "trigger_id": trigger_id}).encode()
    request = urllib.request.Request(url + "gradio_api/queue/join", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()
    with urllib.request.urlopen(url + f"gradio_api/queue/data?session_hash={session}", timeout=120) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message["output"].get("data", [message["output"]])
    raise AssertionError("no result on the queue")


def test_private_handlers_on_the_raw_queue_read_no_server_file(server):
    config = json.loads(urllib.request.urlopen(server["url"] + "config", timeout=30).read())
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    model_check = next(d for d in config["dependencies"] if d["outputs"] == [ids["base-status"]])
    preview = next(d for d in config["dependencies"] if d["outputs"] and d["outputs"][0] == ids["samples-0-status"])
    # the model check, asked about a server folder
    [note] = queue_call(server["url"], model_check["id"], [str(server["secrets"] / "server-model")],
                        model_check["targets"][0][0])
    assert note.startswith("✘") and "server folders cannot be read" in note and "parameters" not in note
    assert_clean(note, server)
    # the sample preview, given a server file as if it were an upload
    fake = {"path": str(server["secrets"] / "passwords.txt"), "meta": {"_type": "gradio.FileData"}}
    outputs = queue_call(server["url"], preview["id"], [fake, None, "someorg/base"], preview["targets"][0][0])
    assert_clean(outputs, server)


def test_session_folders_are_removed_after_the_ttl_whatever_route_made_them(server):
    run_config(server, one_expert("x.txt"))  # a REST-route session that never says goodbye
    roots = list(server["tmp"].glob("commerge-*"))
    assert roots and any(root.glob("session-*") for root in roots)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(any(root.glob("session-*")) for root in roots):
        time.sleep(1)
    assert not any(any(root.glob("session-*")) for root in roots), [list(r.iterdir()) for r in roots]


def test_a_visitors_own_run_on_the_demo_still_works(server):
    """What hosting allows: the demo's models and files, as the page sends them, merge and score."""
    d = defaults_from(DEMO_CONFIG)
    rows = [(e.name, e.model, e.calibration, e.evaluation) for e in d.experts][:2]
    rows += [("", None, None, None)] * (MAX_EXPERTS - len(rows))
    files = [handle_file(r[2]) if r[2] else None for r in rows], [handle_file(r[3]) if r[3] else None for r in rows]
    out = server["client"].predict(d.base, 2, *(r[0] for r in rows), *(r[1] for r in rows), *files[0], *files[1],
                                   *([""] * MAX_EXPERTS), ["average"], 0.9, 0.3, 8, 32, 20, "cpu", "float32",
                                   api_name="/run")
    assert out[1].startswith("✔ done · best average accuracy: Average"), out[1]
    assert_clean(out[1], server)
