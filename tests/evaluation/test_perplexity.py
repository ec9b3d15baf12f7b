"""evaluate_tokens: every validation target scored once, whatever the batch and window sizes,
against NLL summed directly over the token stream (a fixed unigram "model")."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from compactlm.evaluation.perplexity import evaluate_tokens
from compactlm.train.mesh import MeshConfig, make_mesh


class UnigramProgram:
    """The piece of a Program evaluate_tokens uses, scoring each target by a fixed table."""

    def __init__(self, log_probs: np.ndarray):
        mesh = make_mesh(MeshConfig(devices=1))
        self.batch_sharding = NamedSharding(mesh, PartitionSpec())
        self._log_probs = jnp.asarray(log_probs)

    def eval_step(self, params, frozen, tokens_BT1, mask_BT):
        targets = tokens_BT1[:, 1:]
        nll = -(self._log_probs[targets] * mask_BT).sum()
        return nll, mask_BT.sum()


class State:
    params = frozen = None


@pytest.mark.parametrize("batch_size, seq_len", [(1, 7), (3, 16), (4, 100), (2, 1)])
def test_every_target_once_and_bits_per_byte(batch_size, seq_len):
    rng = np.random.default_rng(0)
    V = 11
    tokens = rng.integers(0, V, size=203).astype(np.uint16)
    log_probs = np.log(rng.dirichlet(np.ones(V)))
    byte_lengths = rng.integers(0, 4, size=V)
    out = evaluate_tokens(
        UnigramProgram(log_probs),
        State(),
        tokens,
        byte_lengths=byte_lengths,
        batch_size=batch_size,
        seq_len=seq_len,
    )
    targets = tokens[1:].astype(np.int64)
    nll = -log_probs[targets].sum()
    n_bytes = byte_lengths[targets].sum()
    assert out["tokens"] == len(targets) and out["bytes"] == n_bytes
    assert math.isclose(out["loss"], nll / len(targets), rel_tol=1e-5)
    assert math.isclose(out["ppl"], math.exp(nll / len(targets)), rel_tol=1e-5)
    assert math.isclose(out["bpb"], nll / math.log(2) / n_bytes, rel_tol=1e-5)


def test_max_tokens_scores_only_the_prefix():
    V = 5
    tokens = np.arange(50, dtype=np.uint16) % V
    log_probs = np.log(np.full(V, 1 / V))
    out = evaluate_tokens(
        UnigramProgram(log_probs),
        State(),
        tokens,
        byte_lengths=np.ones(V, np.int64),
        batch_size=2,
        seq_len=8,
        max_tokens=21,
    )
    assert out["tokens"] == 20 and out["bytes"] == 20
    assert math.isclose(out["loss"], math.log(V), rel_tol=1e-6)
