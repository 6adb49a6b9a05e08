"""``nf4_layout_problem`` as a table: which bitsandbytes 4-bit weights the one-kernel NF4 dequantization takes.

Pure: the states are made up with the fields bitsandbytes' ``QuantState`` has (no GPU, no bitsandbytes).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lorafleet.train.fast.facts import nf4_layout_problem


def state(**changes) -> SimpleNamespace:
    nested = SimpleNamespace(absmax=torch.zeros(4, dtype=torch.float32), code=torch.zeros(256), blocksize=256)
    values = dict(quant_type="nf4", dtype=torch.bfloat16, blocksize=64, nested=True,
                  absmax=torch.zeros(1024, dtype=torch.uint8), state2=nested)
    values.update(changes)
    return SimpleNamespace(**values)


PACKED = torch.zeros(32768, 1, dtype=torch.uint8)
CASES = {
    # id: (packed, state, words of the problem, or None when the kernel takes the weight)
    "double-quantized NF4, bf16": (PACKED, state(), None),
    "NF4 with fp32 absmax": (PACKED, state(nested=False, absmax=torch.zeros(1024), state2=None), None),
    "fp16 and fp32 outputs": (PACKED, state(dtype=torch.float16), None),
    "blocksize 128": (PACKED, state(blocksize=128), None),
    "FP4": (PACKED, state(quant_type="fp4"), "quant_type fp4"),
    "an int8 output": (PACKED, state(dtype=torch.int8), "dtype torch.int8"),
    "an odd blocksize": (PACKED, state(blocksize=63), "odd blocksize"),
    "bf16 quant storage": (torch.zeros(16384, 1, dtype=torch.bfloat16), state(), "packed storage"),
    "a transposed packed weight": (torch.zeros(1, 32768, dtype=torch.uint8), state(), "packed storage"),
    "nested without its state": (PACKED, state(state2=None), "nested absmax"),
    "nested with fp16 scales": (PACKED, state(state2=SimpleNamespace(
        absmax=torch.zeros(4, dtype=torch.float16), code=torch.zeros(256), blocksize=256)), "nested absmax"),
    "plain absmax in fp16": (PACKED, state(nested=False, absmax=torch.zeros(1024, dtype=torch.float16)),
                             "absmax dtype"),
    "not quantized yet": (PACKED, None, "no quant_state"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_nf4_layout(case: str):
    packed, quant_state, words = CASES[case]
    problem = nf4_layout_problem(packed, quant_state)
    if words is None:
        assert problem is None
    else:
        assert problem is not None and words in problem
