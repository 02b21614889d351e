"""ropekit.hf.patch beyond parity: bf16 at long positions, old checkpoints, refusals, the hot path.

Every test runs on the installed release (``-m release_matrix`` runs them on each one) with a tiny
Llama, the family every release has.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ropekit as rk
from ropekit.transformers import discovery

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import tiny_models as tm  # noqa: E402

pytestmark = pytest.mark.release_matrix
HEAD_DIM, BASE = 16, 10000.0


def _cos_at(module, position: int, dtype=torch.bfloat16) -> torch.Tensor:
    """cos of ``position`` from a rotary module, called the way its release's model calls it."""
    x = torch.zeros(1, dtype=dtype)
    with torch.no_grad():
        if discovery.is_legacy_module(module):
            return module(x, seq_len=position + 1)[0][position]
        return module(x, torch.tensor([[position]]))[0][0, 0]


def _truth(position: int) -> torch.Tensor:
    inv = BASE ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    return torch.cos(position * inv)


def test_bf16_model_keeps_exact_tables_at_position_100k_and_transformers_does_not():
    model, _ = tm.build("llama")
    model.to(torch.bfloat16)
    p = 100_000
    (_, theirs_module), *_ = discovery.rotary_modules(model)
    theirs = _cos_at(theirs_module, p)[: HEAD_DIM // 2].double()
    rk.hf.patch(model)
    ours = _cos_at(model.get_submodule(_first_rotary_path(model)), p)[: HEAD_DIM // 2].double()
    truth = _truth(p)
    assert (ours - truth).abs().max().item() <= 2**-8  # one bf16 rounding of the true value
    assert (theirs - truth).abs().max().item() > 0.1  # bf16 inv_freq: angles off by radians
    rk.hf.unpatch(model)


def _first_rotary_path(model) -> str:
    for path, mod in model.named_modules():
        if isinstance(mod, rk.RotaryEmbedding):
            return path
    raise AssertionError("no ropekit rotary module in the patched model")


def _old_checkpoint(model, base: float = BASE) -> dict:
    """The model's state dict plus per-layer inv_freq keys, as checkpoints before 4.31 carried."""
    sd = dict(model.state_dict())
    inv = 1.0 / (base ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
    for i in range(model.config.num_hidden_layers):
        sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    return sd


def test_patched_model_loads_old_checkpoint_inv_freq_keys_strictly():
    model, ids = tm.build("llama")
    with torch.no_grad():
        reference = tm.output(model, ids)
    with pytest.raises(RuntimeError, match="inv_freq"):
        model.load_state_dict(_old_checkpoint(model), strict=True)  # transformers' own model refuses them
    rk.hf.patch(model)
    result = model.load_state_dict(_old_checkpoint(model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        assert (tm.output(model, ids) - reference).abs().max().item() <= 1e-5 * reference.abs().max().item()
    with pytest.raises(rk.RopeCheckpointError, match=r"model\.layers\.0\.self_attn\.rotary_emb\.inv_freq"):
        model.load_state_dict(_old_checkpoint(model, base=20000.0), strict=True)
    rk.hf.unpatch(model)


def test_report_names_every_module_it_changed():
    model, _ = tm.build("llama")
    rotary_paths = {p for p, _ in discovery.rotary_modules(model)}
    report = rk.hf.patch(model)
    changed = {c.path for c in report.changes if c.what == "rotary module"}
    forwards = {c.path for c in report.changes if c.what == "attention forward"}
    assert changed == rotary_paths and rotary_paths
    assert len(forwards) == model.config.num_hidden_layers
    assert "llama" in str(report) and report.family == "llama" and report.layout == "half"
    rk.hf.unpatch(model)


def _unchanged(model) -> bool:
    return not any("forward" in m.__dict__ or isinstance(m, rk.RotaryEmbedding) for m in model.modules())


def test_refuses_an_apply_function_it_cannot_reproduce_before_changing_anything(monkeypatch):
    import transformers.models.llama.modeling_llama as modeling

    original = modeling.apply_rotary_pos_emb

    @functools.wraps(original)  # the release's own signature
    def not_a_rotation(q, k, cos, sin, *args, **kwargs):  # no layout, no direction reproduces it
        return original(q, k, cos, 2 * sin, *args, **kwargs)

    @functools.wraps(original)
    def inverse_rotation(q, k, cos, sin, *args, **kwargs):  # by -angle, where the config reads +angle
        return original(q, k, cos, -sin, *args, **kwargs)

    for wrong, words in ((not_a_rotation, "rotates in no layout"), (inverse_rotation, "turns by -angle, but")):
        monkeypatch.setattr(modeling, "apply_rotary_pos_emb", wrong)
        model, _ = tm.build("llama")
        with pytest.raises(rk.RopeError, match=words):
            rk.hf.patch(model)
        assert _unchanged(model) and not rk.hf.is_patched(model)


def test_refuses_when_the_config_cannot_be_read(monkeypatch):
    import ropekit.dialects

    def unreadable(config, *args, **kwargs):
        raise rk.RopeConfigError("rope_type='mystery' is not a RoPE ropekit knows")

    monkeypatch.setattr(ropekit.dialects, "from_config", unreadable)
    model, _ = tm.build("llama")
    with pytest.raises(rk.RopeError, match="cannot read this model's RoPE.*mystery"):
        rk.hf.patch(model)
    assert _unchanged(model)


def test_refuses_a_rotary_module_whose_tables_differ_from_the_config():
    model, _ = tm.build("llama")
    for _, mod in discovery.rotary_modules(model):
        for buf in mod.buffers():
            if buf is not None and buf.is_floating_point():
                buf.mul_(0.5)  # the module no longer computes what its config says
    with pytest.raises(rk.RopeError, match="computes other tables"):
        rk.hf.patch(model)
    assert _unchanged(model)


class _Reads(TorchDispatchMode):
    """Records the operators that read a tensor's values on the host or compare tensors."""

    HOST = {"aten::equal", "aten::_local_scalar_dense", "aten::is_nonzero"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.HOST:
            self.seen.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def test_patched_attention_reads_no_values_on_the_host():
    """Table form and layout are decided at patch time: the forward compares and reads nothing."""
    model, ids = tm.build("llama", batch=1)
    rk.hf.patch(model)
    rotate = next(iter(model._ropekit_patch.rotators.values()))
    q, k = torch.randn(1, 4, 12, HEAD_DIM), torch.randn(1, 2, 12, HEAD_DIM)
    angles = torch.arange(12.0)[:, None] * torch.ones(HEAD_DIM // 2)
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
    positional = (torch.arange(12)[None],) if "position_ids" in _required(rotate) else ()
    cos, sin = (cos, sin) if positional else (cos[None], sin[None])
    with _Reads() as reads:
        rotate(q, k, cos, sin, *positional)
    assert reads.seen == []
    rk.hf.unpatch(model)


def _required(fn) -> list[str]:
    import inspect

    return [n for n, p in inspect.signature(fn).parameters.items() if p.default is inspect.Parameter.empty]


def test_dynamic_ntk_state_follows_the_installed_release():
    """After a long batch, each release keeps its own dynamic-NTK state (4.38-4.42: the last call
    longer than the original; 4.43+: the longest seen, reset below the original); a patched model
    follows it call after call, logits equal to the unpatched model's."""
    import copy

    built = tm.build("llama", max_position_embeddings=32, rope_scaling={"type": "dynamic", "factor": 2.0})
    model, _ = built
    patched = copy.deepcopy(model)
    rk.hf.patch(patched)
    gen = torch.Generator().manual_seed(3)
    for n in (60, 45, 20, 50, 40):  # long, shorter long, short, long, long
        ids = torch.randint(3, tm.VOCAB, (1, n), generator=gen)
        with torch.no_grad():
            want, got = tm.output(model, ids), tm.output(patched, ids)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max(), n
