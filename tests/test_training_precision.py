"""bf16 training with float32 master weights, and the attention kernel used while training."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from lastpool.models.backbones import HFBackbone
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.training.precision import MasterWeights, attention_for_training


def _tiny_llama_classifier() -> SequenceClassifier:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config._attn_implementation = "sdpa"
    return SequenceClassifier(HFBackbone(LlamaModel(config)), 32, 3)


def test_small_updates_accumulate_in_the_float32_masters() -> None:
    """An update far below bf16 resolution is lost on bf16 weights but kept by the masters."""
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    master = MasterWeights(layer)
    assert layer.weight.dtype == torch.bfloat16 and master.masters[0].dtype == torch.float32
    optimizer = torch.optim.SGD(master.masters, lr=1e-4)
    for _ in range(100):
        layer(torch.ones(1, 4, dtype=torch.bfloat16)).sum().backward()
        master.collect_grads()
        assert layer.weight.grad is None and master.masters[0].grad is not None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        master.push()
    # 100 steps of 1e-4: each one is below bf16's spacing at 1.0 (2^-7), together they are not.
    assert torch.allclose(master.masters[0], torch.full((1, 4), 0.99), atol=1e-5)
    assert layer.weight.dtype == torch.bfloat16 and torch.all(layer.weight != 1.0)
    master.restore()
    assert layer.weight.dtype == torch.float32
    assert torch.allclose(layer.weight, torch.full((1, 4), 0.99), atol=1e-5)


def test_grads_of_micro_batches_add_up_in_float32() -> None:
    layer = nn.Linear(3, 1, bias=False)
    master = MasterWeights(layer)
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.bfloat16)
    for _ in range(3):
        layer(x).sum().backward()
        master.collect_grads()
    assert torch.equal(master.masters[0].grad, 3 * x.float())


def test_frozen_parameters_get_their_exact_float32_values_back() -> None:
    model = _tiny_llama_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    master = MasterWeights(model)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert len(master.masters) == len(list(model.head.parameters()))  # only the trainable ones
    state = master.trainable_state()
    assert set(state) == {"head.weight", "head.bias"}
    assert all(torch.equal(state[k], before[k]) for k in state)  # float32 values, not the bf16 copies
    master.restore()
    after = model.state_dict()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)


def test_bf16_gradients_match_autocast_gradients() -> None:
    """The master gradients of bf16 weights point where autocast's float32 gradients do (both run the
    matmuls on bf16-rounded weights; bf16 weights also keep the residual stream in bf16)."""
    ids = torch.randint(0, 50, (4, 9))
    mask = torch.ones_like(ids)
    labels = torch.tensor([0, 1, 2, 1])

    def grads(pure_bf16: bool) -> dict[str, torch.Tensor]:
        model = _tiny_llama_classifier()
        master = MasterWeights(model) if pure_bf16 else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not pure_bf16):
            logits = model(ids, mask)
        nn.functional.cross_entropy(logits.float(), labels).backward()
        if master is None:
            return {name: p.grad for name, p in model.named_parameters()}
        master.collect_grads()
        by_param = dict(zip([n for n, _ in model.named_parameters()], master.masters, strict=True))
        return {name: m.grad for name, m in by_param.items()}

    ours, reference = grads(True), grads(False)
    assert ours.keys() == reference.keys()
    for name, ref in reference.items():
        assert ours[name].dtype == torch.float32
        cosine = nn.functional.cosine_similarity(ours[name].flatten(), ref.flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))


def test_eager_attention_while_training_on_cpu_and_sdpa_after() -> None:
    model = _tiny_llama_classifier()
    hf = model.backbone.model
    assert hf.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        expected = model(ids, mask)
    with attention_for_training(model, torch.device("cpu")):
        assert hf.config._attn_implementation == "eager"
        with torch.no_grad():
            torch.testing.assert_close(model(ids, mask), expected, atol=1e-5, rtol=1e-5)
    assert hf.config._attn_implementation == "sdpa"
    try:
        with attention_for_training(model, torch.device("cpu")):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert hf.config._attn_implementation == "sdpa"  # restored on the way out of an interrupted fit


def test_clipping_inside_the_fused_step_matches_clip_grad_norm() -> None:
    """The norm-sized division folded into fused AdamW gives clip_grad_norm_'s updates, clipped or not."""
    from lastpool.training.optimization import clip_in_fused_step, make_optimizer

    for max_norm in (0.05, 1e3):  # clipping every step; never clipping
        torch.manual_seed(0)
        a, b = nn.Linear(8, 4), nn.Linear(8, 4)
        b.load_state_dict(a.state_dict())
        plain, folded = make_optimizer(a, 1e-2, 0.1), make_optimizer(b, 1e-2, 0.1)
        assert folded.defaults["fused"]
        for step in range(5):
            x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step)) * 10
            for model in (a, b):
                model(x).pow(2).sum().backward()
            expected = torch.nn.utils.clip_grad_norm_(list(a.parameters()), max_norm, foreach=True)
            norm = clip_in_fused_step(folded, list(b.parameters()), max_norm)
            torch.testing.assert_close(norm, expected)
            plain.step()
            folded.step()
            plain.zero_grad()
            folded.zero_grad()
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
