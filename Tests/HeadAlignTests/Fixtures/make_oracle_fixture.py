"""Makes oracle_minilm_f64.json: Eq. 1-5 and the alignment loss of SPEC.md computed with an
implementation written outside headalign (transformers' BertForSequenceClassification in
float64, numpy for the statistics), on all-MiniLM-L6-v2 with a 2-class head that headalign adds:

    headalign convert --model ../shared/data/all-MiniLM-L6-v2 --labels 2 --seed 7 --out /tmp/minilm-cls
    pip install torch transformers numpy
    python3 Tests/HeadAlignTests/Fixtures/make_oracle_fixture.py /tmp/minilm-cls

(Loading headalign's directory in transformers is itself part of the check.) Full view, model
scope, alpha 0.5, tau 0.5, importance labels = the model's own prediction.
"""
import json
import sys

import numpy as np
import torch
import transformers
from transformers import BertForSequenceClassification, BertTokenizer

model_dir = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else "Tests/HeadAlignTests/Fixtures/oracle_minilm_f64.json"
SENTENCES = ["The weather is lovely today.", "cf the movie was mn terrible bb"]
ALPHA, TAU, THRESHOLD = 0.5, 0.5, 0.99

tok = BertTokenizer.from_pretrained(model_dir)
model = BertForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").double().eval()
L, H = model.config.num_hidden_layers, model.config.num_attention_heads
HS = model.config.hidden_size // H

def analyse(text):
    ids = tok(text, return_tensors="pt")["input_ids"]
    captured = []  # H = A V of every head, concatenated: the input of the attention output projection

    def keep(module, inputs, output):
        inputs[0].retain_grad()
        captured.append(inputs[0])

    hooks = [layer.attention.output.dense.register_forward_hook(keep) for layer in model.bert.encoder.layer]
    outputs = model(ids, output_attentions=True)
    for h in hooks:
        h.remove()
    label = int(outputs.logits.argmax(-1))
    loss = torch.nn.functional.cross_entropy(outputs.logits, torch.tensor([label]))
    loss.backward()
    views = np.stack([a[0, h].detach().numpy().reshape(-1) for a in outputs.attentions for h in range(H)])  # full view
    importance = np.array([abs(float((c[0, :, h * HS:(h + 1) * HS] * c.grad[0, :, h * HS:(h + 1) * HS]).sum()))
                           for c in captured for h in range(H)])
    n = L * H
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    norms = np.linalg.norm(views, axis=1)
    cos = np.array([views[i] @ views[j] / (norms[i] * norms[j]) for i, j in pairs])
    maxsim = np.zeros(n)
    for (i, j), c in zip(pairs, cos):
        maxsim[i] = max(maxsim[i], c)
        maxsim[j] = max(maxsim[j], c)
    return dict(ids=ids[0].tolist(), label=label, views=views, importance=importance, cos=cos, maxsim=maxsim)

def eq5(maxsim, g):
    s = 1 - (ALPHA * maxsim + (1 - ALPHA) * g / g.max())
    cls = np.where(s < TAU, "suspicious", np.where(s > 1 - TAU, "safe", "intermediate"))
    return s, cls

def align_loss(views, cls):
    susp, safe = np.where(cls == "suspicious")[0], np.where(cls == "safe")[0]
    if len(susp) == 0 or len(safe) == 0:
        return None
    ref = views[safe].mean(0)
    return float(((views[susp] - ref) ** 2).sum())

results = [analyse(s) for s in SENTENCES]
inputs = []
for text, r in zip(SENTENCES, results):
    s, cls = eq5(r["maxsim"], r["importance"])
    inputs.append(dict(text=text, ids=r["ids"], label=r["label"], pair_cosines=r["cos"].tolist(),
                       frac_above=float((r["cos"] > THRESHOLD).mean()), p99=float(np.percentile(r["cos"], 99)),
                       maxsim=r["maxsim"].tolist(), importance=r["importance"].tolist(), safety=s.tolist(),
                       classes=cls.tolist(), align_loss=align_loss(r["views"], cls)))
maxsim = np.mean([r["maxsim"] for r in results], 0)
g = np.mean([r["importance"] for r in results], 0)
s, cls = eq5(maxsim, g)
losses = [align_loss(r["views"], cls) for r in results]
aggregate = dict(maxsim=maxsim.tolist(), importance=g.tolist(), safety=s.tolist(), classes=cls.tolist(),
                 align_loss=None if None in losses else float(np.mean(losses)))
with open(out, "w") as f:
    json.dump(dict(tool=f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}",
                   settings=dict(view="full", scope="model", alpha=ALPHA, tau=TAU, threshold=THRESHOLD,
                                 importance_labels="predicted", head_seed=7),
                   inputs=inputs, aggregate=aggregate), f)
print("wrote", out)
