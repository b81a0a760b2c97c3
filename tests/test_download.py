"""Released weights by name (checksummed downloads from a local HTTP server) and fast offline failures."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from types import MappingProxyType

import pytest
import torch

from clip_dinoiser import download
from clip_dinoiser.download import RELEASED, ReleasedFile, fetch, git_blob_id
from clip_dinoiser.models import build_model, load_heads_state, load_open_clip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves ``files[path]``; a path in ``cut`` announces more bytes than it sends (a broken download)."""

    files: dict[str, bytes] = {}
    cut: set[str] = set()
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + (1000 if self.path in self.cut else 0)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Files.files, _Files.cut, _Files.requests = {}, set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Files
    httpd.shutdown()
    httpd.server_close()


def test_git_blob_id_is_gits_own_hash_object(tmp_path):
    path = tmp_path / "random.bin"
    path.write_bytes(os.urandom(70_001))
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout
    assert git_blob_id(str(path)) == expected.strip()


def test_fetch_downloads_once_and_reuses_the_checked_copy(server, tmp_path):
    url, files = server
    body = os.urandom(200_000)
    files.files["/w.pt"] = body
    (tmp_path / "expected").write_bytes(body)
    blob = git_blob_id(str(tmp_path / "expected"))
    dest = str(tmp_path / "cache" / "w.pt")
    assert fetch(url + "/w.pt", blob, dest, progress=False) == dest
    assert open(dest, "rb").read() == body
    fetch(url + "/w.pt", blob, dest, progress=False)
    assert files.requests == ["/w.pt"]  # the second call used the cached copy
    assert os.listdir(tmp_path / "cache") == ["w.pt"]


@pytest.mark.parametrize("case", ["wrong checksum", "interrupted", "missing"])
def test_a_bad_download_leaves_no_file(server, tmp_path, case):
    url, files = server
    files.files["/w.pt"] = os.urandom(5_000)
    if case == "interrupted":
        files.cut.add("/w.pt")
    path = "/nothing.pt" if case == "missing" else "/w.pt"
    message = {"wrong checksum": "checksum mismatch", "interrupted": "cannot download", "missing": "cannot download"}
    with pytest.raises(ValueError, match=message[case]):
        fetch(url + path, "0" * 40, str(tmp_path / "cache" / "w.pt"), progress=False, timeout=5)
    assert os.listdir(tmp_path / "cache") == []


def test_released_heads_by_name(server, tmp_path, model_cfg, monkeypatch, tiny_heads_file):
    """``model.checkpoint=released``: the file at ``checkpoint_url`` is checked against the checksum in the
    code (patched here to the tiny heads' blob id), cached, and loaded."""
    url, files = server
    files.files["/last.pt"] = open(tiny_heads_file, "rb").read()
    official = RELEASED["heads"]
    patched = ReleasedFile(official.filename, official.url, git_blob_id(tiny_heads_file))
    monkeypatch.setattr(download, "RELEASED", MappingProxyType({**RELEASED, "heads": patched}))
    model = build_model({**model_cfg, "checkpoint": "released", "checkpoint_url": url + "/last.pt"})
    expected = load_heads_state(tiny_heads_file)
    assert torch.equal(model.heads.obj_proj.weight, expected["obj_proj.weight"])
    cached = os.path.join(os.environ["XDG_CACHE_HOME"], "clip_dinoiser", "weights", official.filename)
    assert os.path.isfile(cached)
    build_model({**model_cfg, "checkpoint": "released", "checkpoint_url": url + "/last.pt"})
    assert files.requests == ["/last.pt"]
    os.remove(cached)


def test_demo_with_released_heads_from_a_wrong_file_is_one_line(server, tmp_path, tiny_clip_file, tiny_heads_file):
    """The official checksum refuses any other file: one line, and nothing cached for a later run."""
    import json

    from PIL import Image

    from .conftest import TINY_CLIP_CFG, random_image

    url, files = server
    files.files["/last.pt"] = open(tiny_heads_file, "rb").read()
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    Image.fromarray(random_image(32, 32)).save(tmp_path / "ok.png")
    cache = tmp_path / "xdg"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), "image=ok.png", "prompts=[cat]",
                        f"model.clip.name={tmp_path / 'tiny.json'}", f"model.clip.pretrained={tiny_clip_file[1]}",
                        "model.checkpoint=released", f"model.checkpoint_url={url}/last.pt", "model.proj_dim=16"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]  # after the download's progress bar
    assert last.startswith(f"error: checksum mismatch for {url}/last.pt")
    assert last.endswith(f"expected {RELEASED['heads'].git_blob} (file not kept)")
    assert os.listdir(cache / "clip_dinoiser" / "weights") == []


@pytest.fixture()
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "unreachable"])
def test_uncached_hub_tags_fail_fast_offline(empty_hub_cache, monkeypatch, offline):
    from huggingface_hub import constants

    from clip_dinoiser.teachers.vit import load_timm_vit

    if offline == "HF_HUB_OFFLINE":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:  # as on a machine without network; never touches the real hub
        monkeypatch.setattr(download, "hub_reachable", lambda timeout=2.0: False)
    connections = []  # fast = no request at all (online, huggingface_hub retries for ~55 s): no timing here

    def no_network(self, address, *args, **kwargs):
        connections.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ValueError, match=r"cannot find 1 weights file .*: model\.clip\.pretrained=laion2b_s34b_b88k"):
        build_model({"name": "maskclip", "clip": {"name": "ViT-B-16", "pretrained": "laion2b_s34b_b88k"}})
    with pytest.raises(ValueError, match=r"cannot load CLIP weights 'laion2b_s34b_b88k'.*model\.clip\.pretrained"):
        load_open_clip("ViT-B-16", "laion2b_s34b_b88k")  # the loader alone, past the check: as fast
    with pytest.raises(ValueError, match="cannot load teacher 'vit_small_patch8_224.dino'"):
        load_timm_vit("vit_small_patch8_224", "vit_small_patch8_224.dino")
    assert connections == []
    assert constants.HF_HUB_OFFLINE is (offline == "HF_HUB_OFFLINE")  # restored
