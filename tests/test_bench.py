"""The benchmark scripts run end to end under a tiny load: they are how the performance figures in
bench/README.md are reproduced, so they must not rot. No figure is asserted (speed is measured by
the benchmarks themselves, never by timed tests): the exit status says whether a run measured
(targets met or not) or broke, and every call held and every figure was printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import EXIT_BROKEN, EXIT_MET, EXIT_MISSED
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                reason="the benchmarks pin servers and load to two cores")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)


def test_load_benchmark_reports_every_figure() -> None:
    result = run("bench/load.py", "--calls", "2", "--seconds", "1", "--rounds", "1",
                 "--warmup", "0.2")
    out = result.stdout
    # Measured: whether a tiny load on a shared machine meets the targets is not judged here.
    assert result.returncode in (EXIT_MET, EXIT_MISSED), out + result.stderr
    assert "gateway alone: held 2/2, dropped 0, late frames" in out, out + result.stderr
    assert "memory/call" in out and "frame wait (loop lag) p50/p99" in out
    assert "side by side:  held 2/2 each, dropped 0" in out and "gateway/bare" in out
    assert "PASS  2 calls: no call dropped (0)" in out


def test_a_run_that_cannot_reach_its_gateway_is_broken_not_slow() -> None:
    result = run("bench/load.py", "--url", f"http://127.0.0.1:{free_port()}", "--calls", "1",
                 "--seconds", "1", "--rounds", "1", "--warmup", "0")
    assert result.returncode == EXIT_BROKEN, result.stdout + result.stderr
    assert "the run broke" in result.stderr


def test_compare_runs_two_gateways_side_by_side() -> None:
    result = run("bench/compare.py", "--calls", "2", "--seconds", "1", "--runs", "1",
                 "--warmup", "0.2", "--b-env", "CALL_OUTBOUND_CHUNK_MS=80")
    assert result.returncode == EXIT_MET, result.stdout + result.stderr
    assert "{'CALL_OUTBOUND_CHUNK_MS': '80'}" in result.stdout
    assert "calls dropped" not in result.stdout
    assert "B/A median of 1 runs:" in result.stdout


def test_whisper_benchmark_reports_every_figure() -> None:
    result = run("bench/whisper.py", "--quick")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "word error rate" in out and "CPU per utterance p50" in out
    assert "thread pool (the engine's)" in out and "process pool, 1 process" in out
    assert "1 callers: end of speech -> transcript p50" in out, out
    assert "(1/1 turns heard, 0 calls given up by the gateway)" in out
    assert "gateway CPU" in out and "CPU s per turn" in out


def test_latency_benchmark_reports_every_figure() -> None:
    result = run("bench/latency.py", "--quick", "--setups", "null,google")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "caller observed" in out and "endpointing" in out and "synthesis" in out
    for setup in ("null", "google"):  # one turn heard and timed by the gateway in each
        assert re.search(rf"^{setup} +1/1 +\d+\.\d\d / ", out, re.MULTILINE), out
    assert out.count("(1 calls); as the gateway measures it") == 2, out
