"""The README's Quickstart command, verbatim, in a fresh checkout (no checkpoints, empty caches):
with the weights reachable (a local HTTP server stands in for the Hugging Face hub, which serves
CLIP, and for the released heads' address) it writes its three outputs; offline it fails in one
line naming every missing file with its key."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from .conftest import random_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP_REPO = "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"  # open_clip's hub entry for ViT-B-16 / laion2b_s34b_b88k


def quickstart_command() -> list[str]:
    """The ``python tools/demo.py ...`` line of the README's Quickstart, as a shell would split it."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    line = next(ln for ln in block.splitlines() if ln.startswith("python tools/demo.py"))
    return shlex.split(line.split("  #", 1)[0])


def fresh_checkout(folder) -> str:
    """The repository's tracked files (as they are in the working tree) in ``folder``."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)):
            os.makedirs(os.path.dirname(os.path.join(folder, f)) or folder, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), os.path.join(folder, f))
    return str(folder)


class _Files(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of ``files`` (path -> bytes) with the headers huggingface_hub reads."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def _headers(self) -> bytes | None:
        path = self.path.split("?")[0]
        body = self.files.get(path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return None
        self.requests.append(f"{self.command} {path}")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        return body

    def do_HEAD(self) -> None:  # noqa: N802
        self._headers()

    def do_GET(self) -> None:  # noqa: N802
        body = self._headers()
        if body is not None:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    class Files(_Files):
        files, requests = {}, []

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Files
    httpd.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_env(tmp_path, **extra) -> dict[str, str]:
    """A new user's machine: empty caches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"), **extra}


def test_offline_the_quickstart_names_every_missing_weights_file_in_one_line(tmp_path):
    """Offline, before anything loads: CLIP's and the heads' files in one line, each with its key,
    its local copy's name and the folder to put it in (one attempt tells all)."""
    checkout = fresh_checkout(tmp_path / "clip_dinoiser")
    Image.fromarray(random_image(60, 80)).save(os.path.join(checkout, "photo.jpg"))
    env = user_env(tmp_path, CLIP_DINOISER_RELEASES_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens
                   HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, *quickstart_command()[1:]], cwd=checkout, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot find 2 weights files"), last
    for named in ("model.clip.pretrained=laion2b_s34b_b88k", "ViT-B-16.laion2b_s34b_b88k", "model.checkpoint=released",
                  "last.pt from http://127.0.0.1", "in checkpoints/", "CLIP_DINOISER_WEIGHTS"):
        assert named in last, named
    assert not os.path.exists(os.path.join(checkout, "out"))


@pytest.mark.slow
def test_the_quickstart_runs_as_written_when_the_weights_are_reachable(tmp_path, server):
    """ViT-B-16-sized random CLIP weights on the stand-in hub, random heads at the releases
    address; the released checksum is set to those heads' blob id in the tool's process (a
    ``sitecustomize`` module, as the release tests patch it), everything else as a user runs it."""
    import open_clip
    import torch
    from safetensors.torch import save

    from clip_dinoiser.download import RELEASED, git_blob_id
    from clip_dinoiser.models import DINOiserHeads, save_heads

    url, files = server
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16")
    files.files[f"/{CLIP_REPO}/resolve/main/open_clip_model.safetensors"] = save(
        {k: v.half().contiguous() for k, v in clip.state_dict().items()})
    del clip
    heads = str(tmp_path / "heads.pt")
    save_heads(DINOiserHeads(in_dim=768, proj_dim=256, kernel_size=3), heads)
    files.files[f"/releases/{RELEASED['heads'].filename}"] = open(heads, "rb").read()
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "from types import MappingProxyType\nimport clip_dinoiser.download as d\n"
        "s = d.RELEASED['heads']\n"
        f"d.RELEASED = MappingProxyType({{**d.RELEASED, 'heads': d.ReleasedFile(s.filename, s.url, "
        f"'{git_blob_id(heads)}')}})\n")
    checkout = fresh_checkout(tmp_path / "clip_dinoiser")
    assert os.listdir(os.path.join(checkout, "checkpoints")) == ["README.md"]
    Image.fromarray(random_image(300, 400)).save(os.path.join(checkout, "photo.jpg"))
    env = user_env(tmp_path, HF_ENDPOINT=url, CLIP_DINOISER_RELEASES_URL=f"{url}/releases",
                   PYTHONPATH=f"{shim}{os.pathsep}{checkout}")  # the clone's own package
    command = quickstart_command()
    r = subprocess.run([sys.executable, *command[1:]], cwd=checkout, capture_output=True, text=True, timeout=900,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = os.path.join(checkout, "out")
    assert sorted(os.listdir(out)) == ["photo_figure.png", "photo_labels.png", "photo_mask.png"]
    labels = np.asarray(Image.open(io.BytesIO(open(os.path.join(out, "photo_labels.png"), "rb").read())))
    assert labels.shape == (300, 400) and labels.max() < 3
    assert any(req.endswith("open_clip_model.safetensors") for req in files.requests)
    assert f"GET /releases/{RELEASED['heads'].filename}" in files.requests
