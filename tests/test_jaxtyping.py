"""jaxtyping annotations are checked under pytest (tests/conftest.py's import hook): a wrong shape
at an annotated public boundary fails, the right one passes."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxtyping import TypeCheckError

from compactlm.models.config import ModelConfig
from compactlm.models.transformer import Transformer
from compactlm.train.loss import cross_entropy
from tests.typecheck import JAXTYPED_MODULES


def test_every_module_with_array_annotations_is_instrumented():
    assert {"compactlm.train.loss", "compactlm.models.transformer"} <= set(JAXTYPED_MODULES)
    assert "compactlm.kernels.int4_kernels" not in JAXTYPED_MODULES  # no jaxtyping, Triton


def test_loss_rejects_targets_whose_T_differs_from_the_logits():
    logits_BTV = jnp.zeros((2, 3, 5))
    loss, _ = cross_entropy(logits_BTV, jnp.zeros((2, 3), jnp.int32))
    np.testing.assert_allclose(float(loss), np.log(5), rtol=1e-6)  # uniform over V = 5
    with pytest.raises(TypeCheckError, match="targets_BT"):
        cross_entropy(logits_BTV, jnp.zeros((2, 4), jnp.int32))  # "B T" with T = 4, not 3
    with pytest.raises(TypeCheckError, match="logits_BTV"):
        cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))  # rank 2, not "B T V"


def test_model_rejects_positions_that_do_not_match_the_tokens():
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens_BT = jnp.zeros((1, 4), jnp.int32)
    assert model(tokens_BT, positions_BT=jnp.arange(4)[None]).shape == (1, 4, 32)
    with pytest.raises(TypeCheckError, match="positions_BT"):
        model(tokens_BT, positions_BT=jnp.arange(5)[None])
    with pytest.raises(TypeCheckError, match="tokens_BT"):
        model(jnp.zeros((1, 4), jnp.float32))  # Int[Array, "B T"]: float tokens are refused
