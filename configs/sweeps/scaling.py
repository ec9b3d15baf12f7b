"""Scaling: validation loss vs non-embedding parameters at fixed tokens (Kaplan et al. 2020).

Kaplan et al. (2020, Fig. 1 and eq. 1.1) fit L(N) = (N_c / N)^α_N with α_N ≈ 0.076 for models
trained to convergence on WebText2. Here every width trains on the same 655k tokens (400 steps x
16 x 128 byte tokens of pystdlib), so larger models are further from convergence; the fitted
exponent is a property of this budget and this tiny range (N ~ 50k … 1.8M), not an estimate of α_N.
Depth stays at nano's 4 layers, heads are 16 wide (half as many kv heads), d_ff = 3 d_model.
"""

from compactlm.experiments.sweep import Row, Sweep


def _width(d: int) -> Row:
    # Each override is validated as it is applied (n_heads % n_kv_heads == 0 at every step), so
    # the head counts go in an order that is valid from nano's 4 / 2: heads first when nano's 2 kv
    # heads divide them, else kv heads first.
    heads = d // 16
    kv = max(heads // 2, 1)
    head_keys = [f"model.n_heads={heads}", f"model.n_kv_heads={kv}"]
    if heads % 2:
        head_keys.reverse()
    return Row(
        name=f"d{d}",
        overrides=(f"model.d_model={d}", *head_keys, f"model.d_ff={3 * d}"),
    )


SWEEP = Sweep(
    title="loss vs parameters at fixed tokens (Kaplan et al. 2020, Fig. 1 shape)",
    command="train",
    target="nano",
    common=(
        "train.steps=400",
        "train.eval_every=0",
        "train.checkpoint_every=200",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=tuple(_width(d) for d in (32, 48, 64, 96, 128, 192)),
    seeds=2,
    metrics=("loss", "bpb"),
    x_label="non-embedding parameters",
    x_key="params/non_embedding",
    x_log=True,
    paper_note=(
        "L(N) ∝ N^−0.076 for converged models over 10^3 … 10^9 non-embedding parameters "
        "(Kaplan et al. 2020, eq. 1.5); at a fixed token budget the largest models fall off the "
        "line as they become data-limited (their Fig. 2)."
    ),
)
