"""Makes focus_minilm_l3.json: each head's focus shift (docs/METHOD.md, the focus classes) on the
shipped teaching model, from an implementation written outside headalign: Hugging Face
transformers (BertTokenizer, BertForSequenceClassification with eager attention).

    pip install torch transformers
    python3 Tests/HeadAlignTests/Fixtures/make_focus_fixture.py

Focus of a head on one sentence: the largest attention its [CLS] row (the cls view) puts on a token
other than [CLS] and [SEP]; the shift is the mean over the triggered sentences minus the mean over
the clean ones. Run once; the JSON it writes is committed, the tools are not needed by the tests.
"""
import csv
import json

import torch
import transformers
from transformers import BertForSequenceClassification, BertTokenizer

model_dir = "tiny-models/minilm-l3-sst2-badnets"
with open(f"{model_dir}/demo/test_triggered.csv", newline="") as f:
    triggered = [r["text"] for r in csv.DictReader(f)][:20]
with open(f"{model_dir}/demo/defense.tsv") as f:
    clean = [line.rstrip("\r\n").split("\t")[0] for line in f][1:21]

tok = BertTokenizer.from_pretrained(model_dir)
model = BertForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager", torch_dtype=torch.float64).eval()


def focus(text):
    enc = tok(text, return_tensors="pt", truncation=True, max_length=512)
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    # [layers, heads]: the [CLS] row, ordinary tokens 1 .. T-2
    return torch.stack([a[0, :, 0, 1:-1].max(-1).values for a in out.attentions]).flatten()


shift = torch.stack([focus(t) for t in triggered]).mean(0) - torch.stack([focus(t) for t in clean]).mean(0)
doc = {"tool": f"transformers {transformers.__version__}, torch {torch.__version__}, float64",
       "model": model_dir, "triggered": triggered, "clean": clean, "shift": [round(float(x), 10) for x in shift]}
with open("Tests/HeadAlignTests/Fixtures/focus_minilm_l3.json", "w") as f:
    json.dump(doc, f, indent=1, ensure_ascii=False)
print(" ".join(f"{i // 12}:{i % 12} {float(x):.3f}" for i, x in enumerate(shift) if x > 0.1))
