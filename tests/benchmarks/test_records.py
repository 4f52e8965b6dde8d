"""Results files survive a kill in the middle of an append; records name the code that ran."""

import json
import subprocess

import pytest

from benchmarks.records import append_record, cpu_flags, cpu_name, git_commit, has_record, read_records


def test_a_line_cut_short_is_skipped_and_the_next_record_starts_a_fresh_line(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"method": "l1", "seed": 0})
    with open(path, "a") as fh:
        fh.write('{"method": "bn", "se')  # killed mid-write
    append_record(path, {"method": "bn", "seed": 1})
    with pytest.warns(UserWarning, match=r"results.jsonl:2 is not a whole record"):
        records = read_records(path)
    assert records == [{"method": "l1", "seed": 0}, {"method": "bn", "seed": 1}]
    with pytest.warns(UserWarning):
        assert not has_record(path, {"method": "bn", "seed": 0})  # that cell will run again
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1]) == {"method": "bn", "seed": 1}  # no blank lines


def test_cpu_name_is_the_model_and_its_widest_vector_extension(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f\n"
    )
    assert cpu_name(info) == "AMD EPYC (avx512f)"
    info.write_text("model name\t: Old Xeon\nflags\t\t: fpu sse2 avx\n")
    assert cpu_name(info) == "Old Xeon (avx)"
    assert cpu_name(tmp_path / "missing")  # elsewhere: what the platform module says


def test_cpu_flags_are_those_asked_for_that_the_cpu_has(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Xeon\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert cpu_flags(("avx512_bf16", "amx_bf16"), info) == ["avx512_bf16"]
    assert cpu_flags(("amx_bf16",), tmp_path / "missing") == []


def test_records_name_the_commit_checked_out_when_the_process_asked_first(tmp_path, monkeypatch):
    def commit(message: str) -> str:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", message],
            cwd=tmp_path,
            check=True,
        )
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout.strip()

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    started = commit("the code a long benchmark loaded")
    monkeypatch.chdir(tmp_path)
    git_commit.cache_clear()
    try:
        assert git_commit() == started
        commit("committed while it ran")
        assert git_commit() == started
    finally:
        git_commit.cache_clear()
