"""Offline: the suite runs with sockets refused (loopback excepted) and HF_HUB_OFFLINE=1, and ``hf:`` data sources
fail with one clear line, whether the hub is declared offline or the network is simply not there."""

import socket
import subprocess
import sys

import pytest

from harness import REPO, offline_env
from offline_guard import MESSAGE
from replicate.data import corpora


def test_network_is_refused_in_this_process_and_loopback_is_not():
    with pytest.raises(ConnectionRefusedError, match=MESSAGE):
        socket.create_connection(("93.184.215.14", 443), timeout=2)
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("huggingface.co", 443)
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname(), timeout=2):
        pass


def test_network_is_refused_in_child_processes():
    code = ("import urllib.request\n"
            "try:\n    urllib.request.urlopen('https://huggingface.co', timeout=5)\n"
            "except OSError as e:\n    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], env=offline_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "refused:" in r.stdout and MESSAGE in r.stdout, (r.stdout, r.stderr)


def test_hf_source_declared_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(corpora.DataUnavailable) as e:
        corpora.load("hf:wikitext")
    msg = str(e.value)
    assert "hf:wikitext" in msg and "offline" in msg and "\n" not in msg


def test_hf_source_without_network_is_one_clear_line():
    """No HF_*_OFFLINE variable: ``datasets`` really tries, the connection is refused, the message is one line."""
    env = offline_env()
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(k)
    env["HF_HUB_ETAG_TIMEOUT"] = env["HF_HUB_DOWNLOAD_TIMEOUT"] = "2"
    code = ("from replicate.data import corpora\n"
            "try:\n    corpora.load('hf:wikitext')\n"
            "except corpora.DataUnavailable as e:\n    print('MSG', str(e))\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    lines = [l for l in r.stdout.splitlines() if l.startswith("MSG ")]
    assert r.returncode == 0 and len(lines) == 1, (r.stdout, r.stderr[-2000:])
    assert "corpus 'hf:wikitext'" in lines[0] and "could not be loaded" in lines[0], lines[0]
