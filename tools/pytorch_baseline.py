"""The peer a user would pick instead of headalign: PyTorch on the same shapes as `headalign bench`.

Not part of the build or the tests; run it by hand beside the benchmark, on the same machine:

    pip install torch
    python3 tools/pytorch_baseline.py            # prints median seconds per batch
    python3 tools/pytorch_baseline.py --json peer.json && headalign bench --peer peer.json
                                                 # the same, and bench prints them beside its own

The JSON (version 1): {"version": 1, "peer": "torch 2.x, 2 threads", "measured": ISO-8601 UTC time,
"cases": {NAME: median seconds per batch}}, NAME as bench names its rows ("minilm-l6 fwd+bwd 32 x 64").

Shapes: a MiniLM-shaped BERT (6 layers, 12 heads, d 384, ffn 1536, vocab 30522, classifier)
forward+backward at batch 32 x 64 tokens; one Llama-2-7B-shaped decoder layer (d 4096, 32
heads, SwiGLU 11008, rotary, causal) forward at T = 64. f32, torch.set_num_threads(2).
"""
import argparse
import datetime
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)


def median_time(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


class Bert(nn.Module):
    def __init__(self, vocab=30522, d=384, layers=6, heads=12, ffn=1536, positions=512, labels=2):
        super().__init__()
        self.word = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(positions, d)
        self.token_type = nn.Embedding(2, d)
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, activation="gelu", batch_first=True, norm_first=False)
            for _ in range(layers))
        self.pooler = nn.Linear(d, d)
        self.classifier = nn.Linear(d, labels)

    def forward(self, ids):
        b, t = ids.shape
        x = self.word(ids) + self.pos(torch.arange(t))[None] + self.token_type(torch.zeros_like(ids))
        x = self.norm(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def llama_layer_forward(x, w, heads=32):
    t, d = x.shape
    hs = d // heads

    def rms(v, g):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5) * g

    h = rms(x, w["n1"])
    q = (h @ w["q"].T).view(t, heads, hs).transpose(0, 1)
    k = (h @ w["k"].T).view(t, heads, hs).transpose(0, 1)
    v = (h @ w["v"].T).view(t, heads, hs).transpose(0, 1)
    inv = 1.0 / (10000 ** (torch.arange(0, hs, 2).float() / hs))
    ang = torch.arange(t).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rot(z):
        z1, z2 = z[..., : hs // 2], z[..., hs // 2:]
        return z * cos + torch.cat([-z2, z1], -1) * sin

    a = F.scaled_dot_product_attention(rot(q), rot(k), v, is_causal=True)
    x = x + a.transpose(0, 1).reshape(t, d) @ w["o"].T
    h = rms(x, w["n2"])
    return x + (F.silu(h @ w["g"].T) * (h @ w["u"].T)) @ w["dn"].T


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the timings as JSON for `headalign bench --peer FILE`")
    args = parser.parse_args()
    cases = {}
    model = Bert()
    ids = torch.randint(0, 30522, (32, 64))
    labels = torch.randint(0, 2, (32,))

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(ids), labels).backward()

    peer = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(peer)

    def record(name, seconds):
        cases[name] = round(seconds, 6)
        print(f"{name}: {seconds:.4f} s")

    record("minilm-l6 fwd+bwd 32 x 64", median_time(step))
    with torch.no_grad():
        record("minilm-l6 fwd 32 x 64", median_time(lambda: model(ids)))
        d, f = 4096, 11008
        w = {n: torch.randn(*s) * 0.02 for n, s in
             dict(q=(d, d), k=(d, d), v=(d, d), o=(d, d), g=(f, d), u=(f, d), dn=(d, f)).items()}
        w["n1"], w["n2"] = torch.ones(d), torch.ones(d)
        x = torch.randn(64, d)
        record("llama2-7b 1 layer fwd 1 x 64", median_time(lambda: llama_layer_forward(x, w)))
    if args.json:
        doc = {"version": 1, "peer": peer, "measured": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "cases": cases}
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, args.json)  # atomic


if __name__ == "__main__":
    main()
