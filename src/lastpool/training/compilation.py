"""``--compile``: torch.compile each decoder block for training, once, with dynamic shapes.

Once the matmuls run in bf16, a large share of a CPU training step is elementwise work between them
(RMSNorm's float32 round trip, rotary embeddings, softmax, SiLU, residual adds, and their backward
passes), each op a full pass over memory. Inductor fuses those into a few C++ loops per block, and
the step gets faster (docs/BENCHMARKS.md, "One training step, variant by variant").

Why per block and not the whole model: the blocks share one compiled graph (their parameters are
inputs, not constants), so the cost is one block's compile (much less once inductor's on-disk cache
holds it), a small fraction of compiling the whole model. ``dynamic=True``
because length-bucketed batches change the sequence length every step. Validation runs eagerly
(evaluation mode and no autograd would be a second compile), and the blocks are plain modules again
after training, so saving and prediction never see compiled code. The last block stays eager when its
MLP runs at the pooled token only (see ``compile_blocks``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import nn

from lastpool.errors import ConfigError
from lastpool.models.backbones import block_list


def compile_blocks(model: nn.Module) -> list[nn.Module]:
    """Make the decoder blocks of ``model`` run compiled (lazily, at their first call); returns them.

    A last block whose MLP runs at the pooled token only (models/pooled_only.py) stays eager: dynamo
    does not guard on module hooks, so it would reuse the other blocks' graph and drop the hooks (or,
    compiled first, force them on every block)."""
    pooled_mlp = getattr(model, "pooled_mlp", None)
    hooked = pooled_mlp.block if pooled_mlp is not None else None
    blocks = [block for block in block_list(model) if block is not hooked]
    for block in blocks:
        block.compile(dynamic=True)
    return blocks


@contextmanager
def compiled_blocks(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Inside: every decoder block of ``model`` runs compiled. A compiler failure (e.g. no C++ compiler,
    which inductor needs on CPU) becomes one clear error instead of a traceback."""
    if not enabled:
        yield
        return
    blocks = compile_blocks(model)
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--compile: torch.compile failed ({first_line}); train without --compile") from exc
    finally:
        for block in blocks:
            block._compiled_call_impl = None


def eager() -> AbstractContextManager[None]:
    """A context in which compiled modules run their plain Python code (used for validation)."""
    return torch.compiler.set_stance("force_eager")
