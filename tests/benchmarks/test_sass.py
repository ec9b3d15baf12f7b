"""The SASS counter: its parser on hand-made SASS, and what jax-triton really compiled for sm_90."""

import pytest

from compactlm.benchmarks import sass
from tests.kernels.export_support import requires_plugin

# A hand-made cuobjdump excerpt: a 2-instruction loop, then a 4-instruction loop (the hot one),
# then the trailing self-branch padding.
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;        /* 0x00000a0000017a02 */
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;  /* 0x0 */
        /*0020*/                   IADD3 R0, R0, 0x1, RZ ;       /* 0x0 */
        /*0030*/               @P0 BRA 0x20 ;                    /* 0x0 */
        /*0040*/                   LDGSTS.E.BYPASS.128 [R4], desc[UR4][R2.64] ;  /* 0x0 */
        /*0050*/              @!P1 LDG.E.U16 R7, desc[UR4][R8.64] ;  /* 0x0 */
        /*0060*/                   FFMA R9, R7, R4, R9 ;         /* 0x0 */
        /*0070*/               @P2 BRA 0x40 ;                    /* 0x0 */
        /*0080*/                   EXIT ;                        /* 0x0 */
        /*0090*/                   BRA 0x90 ;                    /* 0x0 */
"""


def test_parser_finds_the_largest_backward_loop_and_load_widths():
    instrs = sass.parse_sass(SASS)
    assert len(instrs) == 10 and instrs[5] == (0x50, "@!P1 LDG.E.U16 R7, desc[UR4][R8.64]")
    assert sass.opcode(instrs[5][1]) == "LDG.E.U16"
    assert sass.hot_loop(instrs[:-1]) == (4, 7)  # 0x40..0x70, not the 2-instruction 0x20 loop
    widths = {sass.opcode(t): sass.load_bytes(sass.opcode(t)) for _, t in instrs}
    assert widths["LDG.E.128"] == 16 and widths["LDGSTS.E.BYPASS.128"] == 16
    assert widths["LDG.E.U16"] == 2 and widths["FFMA"] is None and widths["BRA"] is None
    assert sass.load_bytes("LDGSTS.E") == 4 and sass.load_bytes("LDGDEPBAR") is None


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    return sass.run(WITHIN_BUDGET, (1,), 8192, 8192, tmp_path_factory.mktemp("sass"))


# Every format's M = 1 decode kernel meets its budget (docs/benchmarks.md).
WITHIN_BUDGET = list(sass.FORMATS)


@requires_plugin
@pytest.mark.parametrize("format", WITHIN_BUDGET)
def test_counts_the_kernel_jax_triton_specialised(counted, format):
    (row,) = [r for r in counted if r["format"] == format]
    assert "error" not in row, row.get("error")
    # jax-triton 0.4.1's specialisation, not a hand-made one: the scalar M = 1 became a
    # constexpr, stride_xm = K = 8192 stayed a plain i32, every pointer is 16-byte divisible.
    assert "M" in row["specialised"] and "stride_xm" in row["i32"]
    assert row["divisible_16"] == row["pointers"] and "x_ptr" in row["pointers"]
    bk, bn = (int(v) for v in row["tile"].split("x")[2:0:-1])
    assert row["loop_instructions"] > 0
    expected = row["loop_instructions"] * 32 * row["warps"] / (bk * bn)
    assert row["loop_per_weight"] == pytest.approx(expected)
    assert row["program_per_weight"] >= row["loop_per_weight"]  # the prologue only adds
    # The budget (docs/architecture.md §5) holds, with no spills.
    assert row["loop_per_weight"] <= sass.BUDGETS[format], row
    assert row["spill_stores"] == row["spill_loads"] == 0
    assert row["registers"] > 0 and row["shared"] >= 0
    assert set(row["loop_loads"]) <= {f"{op}.{b}B" for op in ("LDG", "LDGSTS") for b in
                                      (1, 2, 4, 8, 16)}  # fmt: skip


def test_unknown_format_is_one_line_error():
    with pytest.raises(sass.SassError, match="unknown formats \\['int9'\\]; valid: int4"):
        sass.run(["int9"])
