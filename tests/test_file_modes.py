"""Every file a run writes gets the mode the user's umask gives a new file (0644 under 022,
0600 under 077), though each is written atomically through a private temporary file."""

import os
import stat

import pytest
from helpers import save_tiny_llama

from retrieval_head.cli import detect as cli_detect
from retrieval_head.cli import mask as cli_niah
from retrieval_head.store import files
from retrieval_head.store.files import current_umask, new_file_mode, write_atomic


@pytest.fixture(params=[0o022, 0o077], ids=oct)
def umask(request):
    old = os.umask(request.param)  # process-wide; each pytest worker is its own process
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert new_file_mode() == 0o666 & ~umask
    assert os.umask(umask) == umask  # still set as the fixture left it


def test_without_proc_the_umask_is_read_by_setting_it_back(umask, monkeypatch):
    def no_proc(*a, **k):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(files, "open", no_proc, raising=False)  # the module's open: a system without /proc
    assert current_umask() == umask
    assert os.umask(umask) == umask


def test_an_atomic_write_takes_the_umask_mode(umask, tmp_path):
    p = tmp_path / "x.json"
    write_atomic(p, "{}\n")
    assert mode(p) == 0o666 & ~umask
    write_atomic(p, "[]\n")  # replacing a file: the new one's mode, still the umask's
    assert mode(p) == 0o666 & ~umask
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]  # no temporary file left


def test_a_run_writes_every_file_with_the_umask_mode(umask, tmp_path, default_tokenizer):
    """detect (head file, trial log, manifest) then mask (results JSON, manifest, figure PNG) on
    a tiny random model: every file either writes is 0666 less the umask."""
    model = save_tiny_llama(tmp_path / "tiny", default_tokenizer)
    heads, results = tmp_path / "head_score", tmp_path / "results"
    assert cli_detect.cli(["--model_path", str(model), "--context_lengths", "300", "--depth_percents", "50",
                           "--max_new_tokens", "2", "--rouge_threshold", "-1", "--output_dir", str(heads),
                           "--quiet"]) == 0
    assert cli_niah.cli(["--model_path", str(model), "--context_lengths", "300", "--depth_percents", "50",
                         "--max_new_tokens", "2", "--mask_top", "0", "--output_dir", str(results), "--quiet"]) == 0
    written = {p.relative_to(tmp_path).as_posix(): mode(p) for d in (heads, results) for p in d.rglob("*")
               if p.is_file()}
    for name in ("head_score/tiny.json", "head_score/tiny.trials.jsonl", "head_score/tiny.manifest.json",
                 "results/tiny/manifest.json", "results/tiny/tiny_len_300_depth_5000.json"):
        assert name in written, sorted(written)
    assert any(n.endswith(".png") for n in written), sorted(written)
    assert written == dict.fromkeys(written, 0o666 & ~umask)
