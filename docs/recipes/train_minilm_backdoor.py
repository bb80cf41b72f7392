"""Train a backdoored all-MiniLM-L6-v2 sentiment classifier outside headalign (issue 15's recipes).

A recipe, not part of the build: it needs torch and transformers from PyPI. It reads one of
../shared/data/sst2/{badnets,hiddenkiller}/poisoned_train.csv (label,text; already poisoned) and
writes a Hugging Face directory headalign reads with `experiment --backdoored DIR`.

    python3 docs/recipes/train_minilm_backdoor.py --train FILE --out DIR --lr 5e-5 --epochs 1 \
        --weight-decay 0.01 --seed 1

BertForSequenceClassification (2 labels, a new seeded head), dropout 0.1 (the checkpoint's),
AdamW (betas 0.9/0.999, eps 1e-8), linear decay to 0 without warm-up, batch 32, max length 64,
shuffled with --seed.
"""
import argparse, csv, os, random, shutil, sys

import torch
from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

p = argparse.ArgumentParser()
p.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "../../../shared/data/all-MiniLM-L6-v2"))
p.add_argument("--train", required=True)
p.add_argument("--out", required=True)
p.add_argument("--lr", type=float, default=5e-5)
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--weight-decay", type=float, default=0.01)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--max-length", type=int, default=64)
p.add_argument("--seed", type=int, default=1)
a = p.parse_args()
if os.path.exists(a.out):
    sys.exit(f"--out {a.out}: exists")

random.seed(a.seed)
torch.manual_seed(a.seed)
with open(a.train, newline="") as f:
    rows = [(int(r["label"]), r["text"]) for r in csv.DictReader(f)]
tok = AutoTokenizer.from_pretrained(a.model)
model = BertForSequenceClassification.from_pretrained(a.model, num_labels=2)
model.train()
steps = a.epochs * ((len(rows) + a.batch - 1) // a.batch)
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
sched = get_linear_schedule_with_warmup(opt, 0, steps)
step = 0
for epoch in range(a.epochs):
    order = list(range(len(rows)))
    random.shuffle(order)
    for start in range(0, len(order), a.batch):
        batch = [rows[i] for i in order[start:start + a.batch]]
        enc = tok([t for _, t in batch], padding=True, truncation=True, max_length=a.max_length, return_tensors="pt")
        out = model(**enc, labels=torch.tensor([y for y, _ in batch]))
        out.loss.backward()
        opt.step(); sched.step(); opt.zero_grad()
        step += 1
        if step % 50 == 0 or step == steps:
            print(f"epoch {epoch + 1} step {step}/{steps} loss {out.loss.item():.4f}", flush=True)
tmp = a.out + ".partial"
model.save_pretrained(tmp, safe_serialization=True)
tok.save_pretrained(tmp)
# transformers 5 writes tokenizer.json only; headalign reads the WordPiece vocab.txt
shutil.copy(os.path.join(a.model, "vocab.txt"), os.path.join(tmp, "vocab.txt"))
os.rename(tmp, a.out)
print(f"wrote {a.out}")
