"""`compactlm bench decode RUN_DIR peer=...`: the argument handling, without llama.cpp installed."""

import sys

import numpy as np
import pytest

from tests.commandline import cli


@pytest.fixture
def no_llamacpp(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_peer_llamacpp_missing_is_one_line_exit_2(tmp_path, capsys, no_llamacpp):
    # checked before the run loads: no directory, nothing read or written
    assert cli("bench", "decode", str(tmp_path), "peer=llama.cpp") == 2
    err = _one_line_error(capsys)
    assert "llama.cpp is not installed" in err and "pip install llama-cpp-python" in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_peer_lists_the_valid_ones(tmp_path, capsys):
    assert cli("bench", "decode", str(tmp_path), "peer=vllm") == 2
    assert "peer='vllm' is not valid; choose one of: 'none' | 'llama.cpp'" in _one_line_error(
        capsys
    )


def test_gguf_without_peer_is_refused(tmp_path, capsys):
    assert cli("bench", "decode", str(tmp_path), "gguf=x.gguf") == 2
    assert "valid: peer=llama.cpp gguf=PATH" in _one_line_error(capsys)


def test_llamacpp_module_raises_one_line_without_it(no_llamacpp):
    from compactlm.interop import llamacpp

    with pytest.raises(llamacpp.LlamaCppMissing, match="pip install llama-cpp-python"):
        llamacpp.perplexity("x.gguf", [1, 2, 3], byte_lengths=np.ones(4), seq_len=2)


def test_negative_log_likelihood_matches_its_definition():
    from compactlm.interop.llamacpp import _log_softmax_at

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)).astype(np.float32) * 30  # large: a naive exp overflows f32
    targets = np.array([0, 6, 3, 3, 1])
    z = logits.astype(np.float64)
    want = [np.log(np.sum(np.exp(z[i] - z[i].max()))) + z[i].max() - z[i, t]
            for i, t in enumerate(targets)]  # fmt: skip
    np.testing.assert_allclose(_log_softmax_at(logits, targets), want, rtol=1e-12)
