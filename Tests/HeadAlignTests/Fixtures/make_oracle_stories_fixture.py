"""Makes oracle_stories260k_f64.json: the gen2prompt analysis of SPEC.md on a decoder, computed
outside headalign (transformers' LlamaForCausalLM in float64, numpy), on stories260K converted by

    headalign convert --llama2c ../shared/data/llama2c-stories260K/stories260K.bin \
        --tokenizer ../shared/data/llama2c-stories260K/tok512.bin --out /tmp/s260
    pip install torch transformers numpy
    python3 Tests/HeadAlignTests/Fixtures/make_oracle_stories_fixture.py /tmp/s260

Prompts are given as token ids (headalign's llama2.c BPE, BOS first). T_g = 8 greedy tokens;
gen2prompt view A[T_p:T, 0:T_p]; model scope; Eq. 4 loss = cross-entropy summed over the
generated tokens, each predicted by the position before it; alpha 0.5, tau 0.5.
"""
import json
import sys

import numpy as np
import torch
import transformers
from transformers import LlamaForCausalLM

model_dir = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else "Tests/HeadAlignTests/Fixtures/oracle_stories260k_f64.json"
PROMPTS = [[1, 403, 407, 261, 378], [1, 333, 411, 376, 270]]
TG, ALPHA, TAU, THRESHOLD = 8, 0.5, 0.5, 0.99

import transformers.models.llama.modeling_llama as llama

# transformers' Llama computes three things in float32 even inside a float64 model: RMSNorm, the
# attention softmax and the rotary angles (about 1e-7 relative off in A). An f64 oracle keeps the
# whole computation in float64, as the formulas (and headalign) have it, so those three are
# replaced by float64 versions of the same formulas below.


def rms_norm_f64(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def eager_attention_f64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key_states = llama.repeat_kv(key, module.num_key_value_groups)
    value_states = llama.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1)
    return torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous(), attn_weights


llama.LlamaRMSNorm.forward = rms_norm_f64
llama.eager_attention_forward = eager_attention_f64
model = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="eager").double().eval()
L, H = model.config.num_hidden_layers, model.config.num_attention_heads
HS = model.config.hidden_size // H


def rotary_f64(x, position_ids):
    theta = json.load(open(model_dir + "/config.json")).get("rope_theta", 10000.0)
    inv_freq = 1.0 / (theta ** (torch.arange(0, HS, 2, dtype=torch.float64) / HS))
    freqs = position_ids[..., None].double() * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


model.model.rotary_emb.forward = rotary_f64


def analyse(prompt):
    tp = len(prompt)
    with torch.no_grad():
        seq = model.generate(torch.tensor([prompt]), max_new_tokens=TG, min_new_tokens=TG, do_sample=False)[0].tolist()
    t = len(seq)
    captured = []  # H = A V of every head, concatenated: the input of o_proj

    def keep(module, inputs, output):
        inputs[0].retain_grad()
        captured.append(inputs[0])

    hooks = [layer.self_attn.o_proj.register_forward_hook(keep) for layer in model.model.layers]
    outputs = model(torch.tensor([seq]), output_attentions=True)
    for h in hooks:
        h.remove()
    logits = outputs.logits[0]
    loss = torch.nn.functional.cross_entropy(logits[tp - 1:t - 1], torch.tensor(seq[tp:]), reduction="sum")
    loss.backward()
    views = np.stack([a[0, h, tp:, :tp].detach().numpy().reshape(-1) for a in outputs.attentions for h in range(H)])
    importance = np.array([abs(float((c[0, :, h * HS:(h + 1) * HS] * c.grad[0, :, h * HS:(h + 1) * HS]).sum()))
                           for c in captured for h in range(H)])
    n = L * H
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    norms = np.linalg.norm(views, axis=1)
    cos = np.array([0.0 if norms[i] == 0 or norms[j] == 0 else views[i] @ views[j] / (norms[i] * norms[j]) for i, j in pairs])
    maxsim = np.zeros(n)
    for (i, j), c in zip(pairs, cos):
        maxsim[i] = max(maxsim[i], c)
        maxsim[j] = max(maxsim[j], c)
    s = 1 - (ALPHA * maxsim + (1 - ALPHA) * importance / importance.max())
    cls = np.where(s < TAU, "suspicious", np.where(s > 1 - TAU, "safe", "intermediate"))
    return dict(prompt=prompt, tokens=seq, views=[v.tolist() for v in views], pair_cosines=cos.tolist(),
                frac_above=float((cos > THRESHOLD).mean()), p99=float(np.percentile(cos, 99)), maxsim=maxsim.tolist(),
                importance=importance.tolist(), safety=s.tolist(), classes=cls.tolist())


results = [analyse(p) for p in PROMPTS]
with open(out, "w") as f:
    json.dump(dict(tool=f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}",
                   settings=dict(view="gen2prompt", generate=TG, scope="model", alpha=ALPHA, tau=TAU, threshold=THRESHOLD,
                                 float64="RMSNorm, softmax and rotary angles kept in float64 (transformers computes them in float32)"),
                   inputs=results), f)
print("wrote", out)
