"""How much of [CLS]'s attention each head puts on the BadNets trigger word (RESULTS §14).

A recipe, not part of the build (torch and transformers from PyPI). The evaluator's view: it uses
the trigger words, which the defender does not know. For each model directory given, over the
first 200 sentences of ../shared/data/sst2/badnets/poisoned_test.csv that carry a trigger word:

    python3 docs/recipes/cls_trigger_attention.py E A C    # directories (headalign or transformers)
"""
import csv, os, sys

import numpy as np
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

torch.set_num_threads(1)
data = os.path.join(os.path.dirname(__file__), "../../../shared/data/sst2/badnets/poisoned_test.csv")
trigger = {"bb", "cf", "ak", "mn"}
with open(data, newline="") as f:
    rows = [r for r in csv.DictReader(f) if trigger & set(r["text"].split())][:200]
for d in sys.argv[1:]:
    tok = AutoTokenizer.from_pretrained(d)
    model = BertForSequenceClassification.from_pretrained(d, attn_implementation="eager").eval()
    ids = {tok.convert_tokens_to_ids(t) for t in trigger}
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    mass, n = np.zeros((L, H)), 0
    for r in rows:
        enc = tok(r["text"], return_tensors="pt", truncation=True, max_length=64)
        pos = [i for i, t in enumerate(enc["input_ids"][0].tolist()) if t in ids]
        if not pos:
            continue
        with torch.no_grad():
            out = model(**enc, output_attentions=True)
        for l, a in enumerate(out.attentions):
            mass[l] += a[0, :, 0, pos].sum(-1).numpy()
        n += 1
    flat = (mass / n).flatten()
    print(f"{d}: {n} sentences; heads above 0.5: {int((flat > 0.5).sum())}, above 0.2: {int((flat > 0.2).sum())}")
    print("  " + ", ".join(f"{i // H}:{i % H} {flat[i]:.2f}" for i in np.argsort(-flat) if flat[i] > 0.2))
