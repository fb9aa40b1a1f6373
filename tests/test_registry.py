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
from typing import ClassVar

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


# ------------------------------------------------------------------ weights that are members of an archive (a wheel)


class CountingHandler(QuietHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        CountingHandler.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def counting_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    root = tmp_path / "www"
    root.mkdir()
    CountingHandler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(CountingHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, CountingHandler.requests
    httpd.shutdown()


# the real wheel's members, with stand-in bytes: the registry entries are pointed at a small zip served locally
FAKE_MEMBERS = {
    "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite": b"blazeface full range " * 50,
    "mediapipe/modules/palm_detection/palm_detection_full.tflite": b"palm detection " * 80,
    "mediapipe/modules/hand_landmark/hand_landmark_full.tflite": b"hand landmark " * 90,
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_wheel(monkeypatch: pytest.MonkeyPatch, url: str, root: Path, wrong: str = "") -> registry.Archive:
    """A zip holding FAKE_MEMBERS (and files a wheel has besides), served at `url`; the MediaPipe entries pinned
    to it and to the members' digests (`wrong`: that member pinned to another digest)."""
    import zipfile

    path = root / "mediapipe-fake.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in FAKE_MEMBERS.items():
            wheel.writestr(member, data)
        wheel.writestr("mediapipe-0.10.21.dist-info/METADATA", "Name: mediapipe\n")
    archive = registry.Archive("mediapipe-fake.whl", f"{url}/mediapipe-fake.whl", sha(path.read_bytes()))

    def pin(file: registry.WeightFile) -> registry.WeightFile:
        digest = "0" * 64 if file.member == wrong else sha(FAKE_MEMBERS[file.member])
        return dataclasses.replace(file, sha256=digest)

    for name in ("blazeface_full", "mediapipe_hands"):
        main, *extra = [pin(f) for f in registry.files(REGISTRY[name])]
        with_spec(monkeypatch, name, url=archive.url, sha256=main.sha256)
        spec = dataclasses.replace(REGISTRY[name], archive=archive, extra=tuple(extra))
        monkeypatch.setitem(REGISTRY, name, spec)
    return archive


def test_archive_members_are_taken_out_of_one_download(
    monkeypatch: pytest.MonkeyPatch, counting_server: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    url, root, requests = counting_server
    fake_wheel(monkeypatch, url, root)
    cache = ModelsConfig(cache=str(tmp_path / "cache"))
    palm, landmark = registry.resolve_all("mediapipe_hands", cache)
    # named as in the models folder, the detector's two files side by side
    assert (palm.name, landmark.name) == ("mediapipe_palm_detection_full.tflite", "mediapipe_hand_landmark_full.tflite")
    assert palm.parent == landmark.parent == tmp_path / "cache"
    assert palm.read_bytes() == FAKE_MEMBERS["mediapipe/modules/palm_detection/palm_detection_full.tflite"]
    assert resolve("mediapipe_hands", cache) == palm  # the builder's path: the main file's
    # the wheel was downloaded once and not kept; BlazeFace came out of the same download
    face = resolve("blazeface_full", cache)
    assert face.read_bytes() == FAKE_MEMBERS["mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite"]
    assert requests == ["/mediapipe-fake.whl"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        ["mediapipe_face_detection_full_range_sparse.tflite", palm.name, landmark.name]
    )
    # a copy of the folder serves an air-gapped machine (models.dir), with the weights' digest in its stable
    # form: both files' sha256, the palm model's first, joined by "+"
    offline = ModelsConfig(dir=str(tmp_path / "cache"))
    assert registry.resolve_all("mediapipe_hands", offline) == [palm, landmark]
    digest = registry.weights_digest("mediapipe_hands", offline)
    assert digest == f"{sha(palm.read_bytes())}+{sha(landmark.read_bytes())}"
    assert (
        registry.known_digest("mediapipe_hands", offline, {}) == digest == registry.pinned(REGISTRY["mediapipe_hands"])
    )
    assert requests == ["/mediapipe-fake.whl"]


def test_a_member_that_fails_its_pin_is_refused(
    monkeypatch: pytest.MonkeyPatch, counting_server: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    url, root, _ = counting_server
    fake_wheel(monkeypatch, url, root, wrong="mediapipe/modules/hand_landmark/hand_landmark_full.tflite")
    cache = tmp_path / "cache"
    with pytest.raises(ModelMissing, match=r"mediapipe_hand_landmark_full\.tflite is pinned to 0000"):
        registry.resolve_all("mediapipe_hands", ModelsConfig(cache=str(cache)))
    left = {p.name for p in cache.iterdir()}
    assert "mediapipe_hand_landmark_full.tflite" not in left, "a substituted member is never kept"
    assert not [n for n in left if n.endswith((".partial", ".whl"))], left
    # and a member missing from the archive, or an archive that is not the pinned one, are refused too
    with_spec(monkeypatch, "mediapipe_hands", member="mediapipe/modules/not_there.tflite")
    (cache / "mediapipe_palm_detection_full.tflite").unlink(missing_ok=True)
    with pytest.raises(ModelMissing, match=r"has no member mediapipe/modules/not_there\.tflite"):
        registry.resolve_all("mediapipe_hands", ModelsConfig(cache=str(cache)))
    wheel = REGISTRY["blazeface_full"].archive
    assert wheel is not None
    archive = dataclasses.replace(wheel, sha256="f" * 64)
    for name in ("blazeface_full", "mediapipe_hands"):
        monkeypatch.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], archive=archive))
    for stale in cache.iterdir():
        stale.unlink()
    with pytest.raises(ModelMissing, match="pinned to ffff"):
        resolve("blazeface_full", ModelsConfig(cache=str(cache)))
    assert list(cache.iterdir()) == []
    # the advice names the model that asked, not the archive's first entry
    with pytest.raises(ModelMissing, match="pinned to ffff") as refused:
        resolve("mediapipe_hands", ModelsConfig(cache=str(cache)))
    assert "mediapipe_hands needs" in str(refused.value) and "blazeface_full needs" not in str(refused.value)
    assert list(cache.iterdir()) == []


def test_a_model_of_two_files_is_missing_when_either_is(tmp_path: Path) -> None:
    """Offline, both files are needed; the message names both and the archive's member paths."""
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "mediapipe_palm_detection_full.tflite").write_bytes(b"palm")
    with pytest.raises(ModelMissing) as err:
        resolve("mediapipe_hands", ModelsConfig(dir=str(offline)))
    message = str(err.value)
    assert "mediapipe_hand_landmark_full.tflite" in message and "python -m curate.models download" in message
    assert registry.MEDIAPIPE_WHEEL.url in message and "hand_landmark/hand_landmark_full.tflite" in message
    # without both files on disk, the digest is the registry's pins of both (never the palm file's alone)
    assert registry.known_digest("mediapipe_hands", ModelsConfig(dir=str(offline)), {}) == "+".join(
        f.sha256 for f in registry.files(REGISTRY["mediapipe_hands"])
    )


def test_the_mediapipe_pins_are_the_shared_files() -> None:
    """The registry's member pins are the digests of the files in the models folder (README-mediapipe.md), and
    the hand detector finds its landmark file under the name the registry gives it."""
    from curate.detect.hands import LANDMARK_FILE

    assert registry.MEDIAPIPE_WHEEL.sha256 == "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3"
    assert registry.MEDIAPIPE_WHEEL.url.endswith("/" + registry.MEDIAPIPE_WHEEL.filename)
    assert [f.filename for f in registry.files(REGISTRY["mediapipe_hands"])][1:] == [LANDMARK_FILE]
    for spec in REGISTRY.values():
        if spec.archive is None:
            continue
        assert spec.url == spec.archive.url and len(spec.archive.sha256) == 64, spec.name
        for file in registry.files(spec):
            assert file.member.startswith("mediapipe/modules/") and len(file.sha256) == 64, (spec.name, file)
            if (MODELS / file.filename).is_file():
                assert registry.sha256_file(MODELS / file.filename) == file.sha256, file.filename
