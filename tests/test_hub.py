"""A hub source that cannot be reached fails fast, with one line naming the embedded alternative."""

from __future__ import annotations

import os
import socket

import pytest
from conftest import irlnb_cli, write_params

from irlnb.sources import SourceError, check_hub_source, parse_source


@pytest.fixture
def silent_server():
    """A loopback port that accepts connections and never answers (a hung hub)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def closed_port():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}"


def test_a_hung_hub_fails_within_the_probes_own_timeout(silent_server, tmp_path, monkeypatch):
    """The probe bounds its wait by the timeout it passes to the request (asserted, not the wall time, which a
    loaded machine stretches)."""
    import urllib.request

    from irlnb import sources

    monkeypatch.setenv("HF_ENDPOINT", silent_server)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    timeouts = []
    real_urlopen = urllib.request.urlopen

    def urlopen(request, *args, timeout=None, **kwargs):
        timeouts.append(timeout)
        return real_urlopen(request, *args, timeout=0.5, **kwargs)  # the silent server never answers: fail fast

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(SourceError, match="use the embedded alternative embedded:tox-block"):
        check_hub_source(parse_source("hub:s-nlp/roberta_toxicity_classifier", "toxicity_classifier"))
    assert timeouts and all(t == sources.HUB_PROBE_TIMEOUT_S for t in timeouts) and sources.HUB_PROBE_TIMEOUT_S <= 10


def test_run_with_an_unreachable_hub_exits_with_one_line_and_writes_nothing(closed_port, tmp_path):
    params = write_params(tmp_path, sources__policy="hub:EleutherAI/pythia-70m")
    done = irlnb_cli(
        "run", str(params), env={"HF_ENDPOINT": closed_port, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "hub:EleutherAI/pythia-70m: the Hugging Face hub is unreachable" in lines[0]
    assert "embedded:smollm2-135m-instruct" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_hub_data_set_in_the_local_cache_is_read_without_the_network(closed_port, tmp_path):
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "datasets--someone--comments"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "train.csv").write_text("comment_text,toxic\nYou are an idiot,1\nWhat a lovely day,0\n")
    # A fresh process (the hub client reads HF_HOME when imported); the hub answers nothing, so any lookup
    # beyond the one short probe would fail.
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": closed_port,
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
    }
    code = (
        "from irlnb.data.curation import load_comments; "
        "c = load_comments('hub:someone/comments', 'comment_text', 'toxic'); "
        "print(c['text'].tolist(), c['label'].tolist())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['You are an idiot', 'What a lovely day'] [1, 0]"
