"""The model registry's download and verification, against a real local HTTP server: pinned files are checked
against their pin; a model with no published digest (RetinaFace R50) gets the digest of its first download
recorded and checked from then on; a missing file offline fails with a message that says how to get it."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import MODELS

from curate.config import ModelsConfig
from curate.models import registry
from curate.models.registry import REGISTRY, ModelMissing, recorded_pin, resolve


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def with_spec(monkeypatch: pytest.MonkeyPatch, name: str, **changes: str) -> registry.ModelSpec:
    spec = dataclasses.replace(REGISTRY[name], **changes)
    monkeypatch.setitem(REGISTRY, name, spec)
    return spec


def test_pinned_download_is_verified(monkeypatch: pytest.MonkeyPatch, server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    weights = MODELS / "retinaface_mobilenet0.25_Final.pth"
    if not weights.exists():
        pytest.skip(f"{weights} not found")
    (root / "good.pth").write_bytes(weights.read_bytes())
    (root / "bad.pth").write_bytes(weights.read_bytes()[:-1] + b"x")
    cache = ModelsConfig(cache=str(tmp_path / "cache"))
    with_spec(monkeypatch, "retinaface_mnet025", url=f"{url}/good.pth")
    path = resolve("retinaface_mnet025", cache)
    assert path.read_bytes() == weights.read_bytes()
    assert not recorded_pin(path).exists()  # a pinned model needs no recorded digest
    path.unlink()
    with_spec(monkeypatch, "retinaface_mnet025", url=f"{url}/bad.pth")
    with pytest.raises(ModelMissing, match="pinned to 2979b33f"):
        resolve("retinaface_mnet025", cache)
    assert not path.exists() and not list(path.parent.glob("*.partial")), "a bad download leaves nothing behind"


def test_unpinned_model_records_its_first_download(
    monkeypatch: pytest.MonkeyPatch, server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = server
    payload = b"not really a checkpoint, but bytes to pin"
    (root / "retinaface.pth").write_bytes(payload)
    spec = with_spec(monkeypatch, "retinaface_r50", url=f"{url}/retinaface.pth")
    assert spec.sha256 == "", "R50 has no published digest"
    cache = ModelsConfig(cache=str(tmp_path / "cache"))
    path = resolve("retinaface_r50", cache)
    pin = recorded_pin(path)
    assert pin.read_text().strip() == hashlib.sha256(payload).hexdigest()
    assert resolve("retinaface_r50", cache) == path  # checked again, no new download
    path.write_bytes(payload + b"tampered")
    with pytest.raises(ModelMissing, match="recorded"):
        resolve("retinaface_r50", cache)
    # a copy without its recorded digest (e.g. an air-gapped models.dir) is refused, with what to do
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "retinaface.pth").write_bytes(payload)
    with pytest.raises(ModelMissing, match=r"python -m curate\.models download"):
        resolve("retinaface_r50", ModelsConfig(dir=str(offline)))
    (offline / "retinaface.pth.sha256").write_text(hashlib.sha256(payload).hexdigest())
    assert resolve("retinaface_r50", ModelsConfig(dir=str(offline))) == offline / "retinaface.pth"


def test_missing_offline_names_the_file_and_the_way_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing) as err:
        resolve("retinaface_r50", ModelsConfig(dir=str(tmp_path)))
    message = str(err.value)
    assert "retinaface.pth" in message and "python -m curate.models download" in message
    assert "no published sha256" in message


def test_a_failed_download_names_the_configured_cache(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, _ = server
    spec = dataclasses.replace(REGISTRY["yolox_nano"], url=f"{base}/not-there.onnx")
    cache = tmp_path / "my-cache"
    cfg = ModelsConfig(cache=str(cache))
    with pytest.raises(ModelMissing) as caught:
        registry.download(spec, registry.locate(spec, cfg), cfg)
    message = str(caught.value)
    # before: the advice named ~/.cache/curate/models whatever models.cache said
    assert str(cache) in message and ".cache/curate/models" not in message
    assert not list(cache.glob("*.partial"))
