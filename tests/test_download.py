"""Training data without the internet: a CIFAR-10 archive in torchvision's format served from a loopback HTTP server.

The default config (config/config.yaml) names a local image folder and its archive; neither exists here, so its
victim stage must download torchvision's CIFAR-10 (pointed at the loopback server), verify it, decode it and train.
Every bad input (refused connection, wrong checksum, truncated archive, a folder lacking a class) gives one line
naming the source and the remedy, within the stated timeout, and leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import pickle
import socket
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image

from invgrad import data
from invgrad.data import download, trainset
from invgrad.replication import plan

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import _common  # noqa: E402
import decode_split  # noqa: E402
import make_report  # noqa: E402
import train_victim  # noqa: E402

PER_BATCH, TEST = 30, 60  # 150 training images, 60 test images
REMEDY = ("make CIFAR10_ARCHIVE=", "image-folder:<path>", "network access for torchvision")


def _batch(n: int, seed: int) -> dict:
    """n images in torchvision's pickle layout: rows of 3072 uint8 (R, G, B planes), class-coloured plus noise."""
    rng = np.random.default_rng(seed)
    labels = [int(y) for y in rng.integers(0, 10, n)]
    base = np.array(labels, dtype=np.float64)[:, None] * 25
    pixels = np.clip(base + rng.normal(0, 20, (n, 3072)), 0, 255).astype(np.uint8)
    return {"data": pixels, "labels": labels}


def _cifar_archive() -> tuple[bytes, dict[str, str]]:
    """A valid cifar-10-python.tar.gz and the MD5 of each of its files (torchvision's per-file list)."""
    files = {f"data_batch_{i}": pickle.dumps(_batch(PER_BATCH, i)) for i in range(1, 6)}
    files["test_batch"] = pickle.dumps(_batch(TEST, 99))
    files["batches.meta"] = pickle.dumps({"label_names": list(data.CIFAR10_CLASSES)})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue(), {name: hashlib.md5(p).hexdigest() for name, p in files.items()}


ARCHIVE, FILE_MD5 = _cifar_archive()


class _Handler(http.server.BaseHTTPRequestHandler):
    payloads: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.payloads.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    """A loopback HTTP server on a random port, in a thread; shut down at the end of the test."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.payloads = {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _point_torchvision(monkeypatch, url: str, tgz_md5: str) -> None:
    """torchvision's CIFAR10 reads its URL, archive MD5 and per-file MD5s from class attributes: point them here."""
    monkeypatch.setattr(tvd.CIFAR10, "url", url)
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", tgz_md5)
    monkeypatch.setattr(
        tvd.CIFAR10, "train_list", [[f"data_batch_{i}", FILE_MD5[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", FILE_MD5["test_batch"]]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": FILE_MD5["batches.meta"]})


def _serve(server, monkeypatch, body: bytes, tgz_md5: str | None = None) -> str:
    httpd, base = server
    _Handler.payloads["/cifar-10-python.tar.gz"] = body
    url = f"{base}/cifar-10-python.tar.gz"
    _point_torchvision(monkeypatch, url, tgz_md5 or hashlib.md5(body).hexdigest())
    return url


def _default_config(tmp_path, monkeypatch) -> dict:
    """config/config.yaml as `make` runs it, in an empty project folder (no image folder, no archive)."""
    monkeypatch.chdir(tmp_path)
    config = _common.load_config([str(ROOT / "config" / "config.yaml")])
    assert config["data"]["download"] is True
    assert not Path(config["data"]["archives"]["CIFAR10"]).exists()
    return config


def _decode(config: dict, split: str) -> dict:
    """The decode_split job of the DAG (workflow/rules/training.smk builds the same spec)."""
    block = config["data"]
    spec = {
        "dataset": "CIFAR10",
        "source": block["train"]["CIFAR10"],
        "archive": block["archives"]["CIFAR10"],
        "download": block["download"],
        "split": split,
        "data_root": block["root"],
    }
    out = plan.split_cache("CIFAR10", split)
    assert decode_split.main(["--spec", json.dumps(spec), "--out", out]) == 0
    return trainset.load_split(out)[2]


def _left_behind(root: Path) -> list[str]:
    """Anything under root but the lock file: a partial archive, a temporary or half-extracted folder."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


def test_default_config_downloads_verifies_decodes_and_trains(tmp_path, monkeypatch, server):
    url = _serve(server, monkeypatch, ARCHIVE)
    config = _default_config(tmp_path, monkeypatch)
    ok, why = plan.training_data_status(config, "CIFAR10")
    assert ok and "torchvision CIFAR10" in why and "on first use" in why

    train_meta, test_meta = _decode(config, "train"), _decode(config, "test")
    assert train_meta["status"] == "ok" and train_meta["source"] == "CIFAR10"
    assert train_meta["origin"] == "torchvision CIFAR10, downloaded into data/raw"
    assert train_meta["images"] == 5 * PER_BATCH and test_meta["images"] == TEST
    assert _left_behind(tmp_path / "data/raw") == ["cifar-10-batches-py"]  # archive removed once verified
    expected = np.concatenate([_batch(PER_BATCH, i)["data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    images, labels, _ = trainset.load_split(plan.split_cache("CIFAR10", "train"))
    assert np.array_equal(images.numpy(), expected)
    assert labels.tolist() == [y for i in range(1, 6) for y in _batch(PER_BATCH, i)["labels"]]
    del _Handler.payloads[
        "/cifar-10-python.tar.gz"
    ]  # a second resolution uses the verified files, no network
    assert data.resolve_training_source("CIFAR10", "CIFAR10", root="data/raw").available, url

    path, spec = next((p, s) for p, s in plan.victims(config).items() if s["model"] == "LeNetZhu")
    spec = {**spec, "epochs": 1, "eval_images": 20}
    assert train_victim.main(["--spec", json.dumps(spec), "--out", path]) == 0
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    assert meta["status"] == "ok" and meta["training_images"] == 5 * PER_BATCH
    assert meta["training_data"] == "CIFAR10" and "torchvision" in meta["training_data_origin"]
    assert meta["training_data_sha256"] == train_meta["sha256"] and 0 <= meta["val_accuracy"] <= 1
    row = next(
        line for line in make_report.victim_lines(Path("results")) if line.startswith("| CIFAR10/LeNetZhu")
    )
    assert (
        "| torchvision CIFAR10, downloaded into data/raw |" in row
        and f"`{train_meta['sha256'][:16]}…`" in row
    )


def _assert_not_run(meta: dict, *fragments: str) -> None:
    reason = meta["reason"]
    assert meta["status"] == "not run" and "\n" not in reason
    assert reason.startswith("not run: needs the CIFAR10 training split")
    for text in (*fragments, *REMEDY):
        assert text in reason, (text, reason)


def test_corrupted_download_is_refused_and_the_victim_says_why(tmp_path, monkeypatch, server):
    corrupted = bytearray(ARCHIVE)
    corrupted[len(corrupted) // 2] ^= 0xFF
    url = _serve(server, monkeypatch, bytes(corrupted), tgz_md5=hashlib.md5(ARCHIVE).hexdigest())
    config = _default_config(tmp_path, monkeypatch)
    meta = _decode(config, "train")
    _assert_not_run(meta, url, "failed torchvision's checksum", "not kept")
    assert meta["images"] == 0 and _left_behind(tmp_path / "data/raw") == []

    path, spec = next((p, s) for p, s in plan.victims(config).items() if s["model"] == "LeNetZhu")
    assert train_victim.main(["--spec", json.dumps(spec), "--out", path]) == 0
    victim = json.loads(Path(path).with_suffix(".json").read_text())
    assert victim["status"] == "not run" and victim["reason"] == meta["reason"]


def test_unreachable_host_fails_within_the_timeout(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    _point_torchvision(monkeypatch, url, hashlib.md5(ARCHIVE).hexdigest())
    start = time.monotonic()
    resolved = data.resolve_training_source("CIFAR10", "CIFAR10", root=tmp_path / "raw")
    assert time.monotonic() - start < download.DOWNLOAD_TIMEOUT_S
    assert not resolved.available
    _assert_not_run({"status": "not run", "reason": resolved.reason}, f"download of {url} failed", "refused")
    assert _left_behind(tmp_path / "raw") == []


def test_silent_server_times_out(tmp_path, monkeypatch):
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/cifar-10-python.tar.gz"
        _point_torchvision(monkeypatch, url, hashlib.md5(ARCHIVE).hexdigest())
        start = time.monotonic()
        with pytest.raises(data.DataUnavailableError, match="timed out; timeout 0.5 s per read"):
            download.download_cifar("CIFAR10", tmp_path / "raw", timeout=0.5)
        assert time.monotonic() - start < 5
    assert _left_behind(tmp_path / "raw") == []


def test_wrong_checksum(tmp_path, monkeypatch, server):
    url = _serve(server, monkeypatch, ARCHIVE, tgz_md5="0" * 32)
    resolved = data.resolve_training_source("CIFAR10", None, root=tmp_path / "raw")
    _assert_not_run({"status": "not run", "reason": resolved.reason}, url, "expected 00000000")
    assert _left_behind(tmp_path / "raw") == []


def test_truncated_download(tmp_path, monkeypatch, server):
    truncated = ARCHIVE[: len(ARCHIVE) // 2]  # its own MD5 matches: only the extraction can tell
    url = _serve(server, monkeypatch, truncated)
    resolved = data.resolve_training_source("CIFAR10", "CIFAR10", root=tmp_path / "raw")
    _assert_not_run(
        {"status": "not run", "reason": resolved.reason}, f"archive {url} is damaged or truncated"
    )
    assert _left_behind(tmp_path / "raw") == []


def _image_folder(root: Path, classes) -> Path:
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32), (10, 20, 30)).save(root / split / name / "0.png")
    return root


def test_truncated_local_archive(tmp_path):
    folder = _image_folder(tmp_path / "src" / "cifar10-jpeg", data.CIFAR10_CLASSES)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar10-jpeg")
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    archive.write_bytes(buffer.getvalue()[:-200])
    root = tmp_path / "raw"
    resolved = data.resolve_training_source(
        "CIFAR10", f"image-folder:{root / 'cifar10-jpeg'}", archive=archive, root=root, download=False
    )
    _assert_not_run({"status": "not run", "reason": resolved.reason}, f"archive {archive} is damaged")
    assert _left_behind(root) == []
    archive.write_bytes(buffer.getvalue())  # the whole archive: unpacked and used
    resolved = data.resolve_training_source(
        "CIFAR10", f"image-folder:{root / 'cifar10-jpeg'}", archive=archive, root=root, download=False
    )
    assert resolved.source == f"image-folder:{root / 'cifar10-jpeg'}" and str(archive) in resolved.origin


def test_image_folder_missing_a_class_is_refused(tmp_path, monkeypatch):
    folder = _image_folder(tmp_path / "cifar10-jpeg", data.CIFAR10_CLASSES[:-1])
    _point_torchvision(monkeypatch, "http://127.0.0.1:9/never-asked", "0" * 32)
    resolved = data.resolve_training_source("CIFAR10", f"image-folder:{folder}", root=tmp_path / "raw")
    _assert_not_run(
        {"status": "not run", "reason": resolved.reason},
        f"image folder {folder / 'test'} lacks 1 of the 10 CIFAR10 class folders (truck)",
    )
    assert not (tmp_path / "raw").exists()  # a broken local folder is reported, not replaced by a download


def test_nothing_available_offline_without_download(tmp_path):
    resolved = data.resolve_training_source(
        "CIFAR10",
        f"image-folder:{tmp_path}/none",
        archive=tmp_path / "none.tar.gz",
        root=tmp_path,
        download=False,
    )
    _assert_not_run(
        {"status": "not run", "reason": resolved.reason},
        f"no image folder {tmp_path}/none",
        "data.download: false",
    )
