"""torch.compile: a compiled base is unwrapped before adapting; a compiled PeftModel gives the
eager logits and gradients (PASTA, VPT).

Backend "aot_eager": it runs dynamo's capture and AOTAutograd's forward/backward split — where
hooks, per-forward state and the float32-table casts could go wrong — without inductor's C++
code generation, which takes minutes per graph on this 2-core box. Code generation itself is
torch's to test.
"""

from __future__ import annotations

import pytest
import torch

import peftkit
from tests.methods.test_vpt import images, tiny_vit
from tests.tiny_models import make_batch, make_tiny_model, special_ids

BACKEND = "aot_eager"


def pasta_config():
    return peftkit.PastaConfig(special_token_ids=special_ids("bert"), init="normal")


def test_a_compiled_base_is_unwrapped_so_the_method_attaches():
    compiled = torch.compile(make_tiny_model("bert"), backend=BACKEND)
    batch = make_batch("bert")
    compiled(**batch)
    model = peftkit.get_peft_model(compiled, pasta_config())
    assert model.base_model is compiled._orig_mod
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert "adapter.special_token_embeddings" in trainable
    assert all(name.startswith(("adapter.", "base_model.classifier.")) for name in trainable), trainable
    reference = peftkit.get_peft_model(make_tiny_model("bert"), pasta_config())
    reference.load_state_dict(model.state_dict())
    assert torch.equal(model(**batch).logits, reference(**batch).logits)


def eager_and_compiled(model, inputs):
    def run(module):
        model.zero_grad()
        outputs = module(**inputs)
        outputs.loss.backward()
        return outputs.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    return run(model), run(torch.compile(model, backend=BACKEND))


@pytest.mark.parametrize("case", ["pasta", "vpt-deep"])
def test_compiled_peft_model_gives_the_eager_logits_and_gradients(case, single_torch_thread):
    if case == "pasta":
        model = peftkit.get_peft_model(make_tiny_model("bert"), pasta_config())
        inputs = {**make_batch("bert"), "labels": torch.tensor([0, 2])}
        adapter_parameter = "adapter.special_token_embeddings"
    else:
        model = peftkit.get_peft_model(tiny_vit(), peftkit.VptConfig(num_prompt_tokens=3, deep=True))
        inputs = {"pixel_values": images(), "labels": torch.tensor([0, 1, 2, 0])}
        adapter_parameter = "adapter.prompt_embeddings"
    model.eval()  # dropout off: compiled and eager runs draw random numbers differently
    (logits, grads), (compiled_logits, compiled_grads) = eager_and_compiled(model, inputs)
    torch.testing.assert_close(compiled_logits, logits)
    assert compiled_grads.keys() == grads.keys() and grads[adapter_parameter].abs().sum() > 0
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, msg=lambda m: f"{name}: {m}")
