"""Real DICOM software for the node's tests: Orthanc (a stand-in PACS) and dcmtk's storescu.

``python tests/dicom_services.py`` (``make services``) installs what is missing, as root, with
``apt-get install -y --no-install-recommends orthanc orthanc-dicomweb dcmtk``. The tests call
:func:`require`, which installs the same way when it can and skips otherwise.

:class:`Orthanc` runs one Orthanc on free loopback ports with a configuration it writes (HTTP
for 127.0.0.1 only, no authentication, storage and index in its folder, the DICOMweb plugin,
stores accepted only from the modalities it is given, each from 127.0.0.1). :func:`storescu`
sends files the way a modality does. :class:`NodeProcess` runs ``bin/serve-dicom``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
from pydicom import uid

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orthanc", "orthanc-dicomweb", "dcmtk")
PROGRAMS = ("Orthanc", "storescu")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
HOST = "127.0.0.1"
# storescu's option proposing a compressed transfer syntax (with all uncompressed ones)
STORESCU_SYNTAX = {uid.JPEGBaseline8Bit: "-xy", uid.JPEGExtended12Bit: "-xx",
                   uid.JPEGLosslessSV1: "-xs", uid.JPEG2000Lossless: "-xv",
                   uid.JPEG2000: "-xw", uid.JPEGLSLossless: "-xt", uid.JPEGLSNearLossless: "-xu",
                   uid.RLELossless: "-xr", uid.DeflatedExplicitVRLittleEndian: "-xd"}


def missing() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None] + \
        ([] if os.path.exists(DICOMWEB_PLUGIN) else ["the Orthanc DICOMweb plugin"])


def install() -> None:
    """apt-get install what is missing (root only); RuntimeError saying what to do otherwise."""
    if not missing():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing {', '.join(missing())}: as root, apt-get install -y "
                           f"--no-install-recommends {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
                   check=True, env=env)


def require() -> None:
    """In a test: install what is missing, or skip saying why."""
    import pytest

    try:
        install()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(str(exc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something true; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


class Orthanc:
    """An Orthanc of its own in ``folder``; ``modalities``: name -> (AE title, port) on
    127.0.0.1, the peers it may send to and accept stores from. ``nodelay``: run it with
    ``TCP_NODELAY=1``, without which its DCMTK keeps Nagle's algorithm on and answers every
    DIMSE message after the peer's delayed acknowledgement (about 40 ms on Linux)."""

    def __init__(self, folder: Path, modalities: dict[str, tuple[str, int]],
                 aet: str = "ORTHANC", nodelay: bool = True):
        self.nodelay = nodelay
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.aet, self.http_port, self.dicom_port = aet, free_port(), free_port()
        self.url = f"http://{HOST}:{self.http_port}"
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "keras-ptx-test", "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomModalities": {name: [ae, HOST, port] for name, (ae, port) in modalities.items()},
            "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True,
            "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SaveJobs": False, "StableAge": 2, "DicomScuTimeout": 10,
        }, indent=1))
        self.process = None

    def start(self) -> "Orthanc":
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen(["Orthanc", str(self.config)], stdout=log, stderr=log,
                                        start_new_session=True,
                                        env={**os.environ, "TCP_NODELAY": "1" if self.nodelay
                                             else "0"})
        wait_for(self._up, 60, "Orthanc answering on its HTTP port")
        return self

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({self.process.returncode}): see "
                               f"{self.folder / 'orthanc.log'}")
        try:
            return self.get("/system")["DicomAet"] == self.aet
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def request(self, method: str, path: str, body=None):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=60) as answer:
            raw = answer.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body=None):
        return self.request("POST", path, body)

    def forward_study(self, study_uid: str, modality: str) -> None:
        """Orthanc sends a stored study to ``modality`` by C-STORE (REST, synchronous)."""
        orthanc_id = self.post("/tools/lookup", study_uid.encode())[0]["ID"]
        self.post(f"/modalities/{modality}/store", {"Resources": [orthanc_id],
                                                    "Synchronous": True})

    def ids(self, modality: str | None = None, study_uid: str | None = None) -> list[str]:
        """The stored instances of ``modality`` and ``study_uid`` (when given), by Orthanc ID:
        one indexed query, cheap enough to poll while a benchmark runs."""
        query = {key: value for key, value in
                 (("Modality", modality), ("StudyInstanceUID", study_uid)) if value}
        return self.post("/tools/find", {"Level": "Instance", "Query": query})

    def instances(self, modality: str | None = None, study_uid: str | None = None) -> list[dict]:
        """Those instances' tags (``simplified-tags``), each with its ``ID``."""
        return [{"ID": instance_id, **self.get(f"/instances/{instance_id}/simplified-tags")}
                for instance_id in self.ids(modality, study_uid)]

    def file(self, instance_id: str) -> pydicom.Dataset:
        from io import BytesIO

        return pydicom.dcmread(BytesIO(self.get(f"/instances/{instance_id}/file")))


def storescu(files, port: int, called: str, calling: str = "STORESCU",
             timeout: float = 120) -> subprocess.CompletedProcess:
    """Send ``files`` with dcmtk's storescu, proposing only their SOP classes (``-R``); one
    association per transfer syntax, with the option that proposes it."""
    groups: dict[str, list[str]] = {}
    for path in files:
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        groups.setdefault(STORESCU_SYNTAX.get(syntax, "-x="), []).append(str(path))
    result = None
    for option, paths in groups.items():
        result = subprocess.run(["storescu", "-aet", calling, "-aec", called, "-R", option,
                                 HOST, str(port), *paths], capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            return result
    return result


class NodeProcess:
    """``bin/serve-dicom`` in its own process group; ``args`` are its options."""

    def __init__(self, args: list[str], log: Path):
        self.args, self.log = args, Path(log)
        self.process = None

    def start(self, wait_port: int | None = None) -> "NodeProcess":
        out = open(self.log, "ab")
        self.process = subprocess.Popen([str(REPO / "bin" / "serve-dicom"), *self.args],
                                        stdout=out, stderr=out, start_new_session=True,
                                        cwd=REPO)
        if wait_port:
            wait_for(lambda: self._listening(wait_port), 180, "the node listening")
        return self

    def _listening(self, port: int) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the node exited ({self.process.returncode}):\n" + self.text())
        with socket.socket() as s:
            return s.connect_ex((HOST, port)) == 0

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait; SIGKILL if it does not end."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


if __name__ == "__main__":
    try:
        install()
    except RuntimeError as exc:
        sys.exit(str(exc))
    print("Orthanc, its DICOMweb plugin and dcmtk are installed")
