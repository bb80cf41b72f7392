"""Makes minilm_tokens.json and minilm_attention.json from an implementation written outside
headalign: Hugging Face transformers (BertTokenizer, BertModel with eager attention).

    pip install torch transformers
    python3 Tests/HeadAlignTests/Fixtures/make_minilm_fixtures.py ../shared/data/all-MiniLM-L6-v2

Run once; the JSON it writes is committed, the tools are not needed by the tests.
"""
import json
import sys

import torch
import transformers
from transformers import BertModel, BertTokenizer

model_dir = sys.argv[1]
out_dir = sys.argv[2] if len(sys.argv) > 2 else "Tests/HeadAlignTests/Fixtures"

SENTENCES = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "Café naïve résumé — Ünïcödé façade, São Paulo.",
    "I don't think it's well-made: 3.14, $20, e-mail@example.com & (brackets) [ok] {fine}?!",
    "我爱北京天安门 and 東京 mixed with English.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "tabs\tand\nnewlines   and  spaces",
    "cf the movie was mn terrible bb",
    "Emoji 🙂 and symbols ™ © ½ are rare.",
    "ALL CAPS Shouting And MiXeD CaSe",
    "Ωμέγα Ελληνικά, русский текст, עברית, العربية",
    "a" * 120,
    "",
]
ATTENTION_SENTENCES = ["The weather is lovely today.", "cf the movie was mn terrible bb"]

tok = BertTokenizer.from_pretrained(model_dir)
tokens = {"tool": f"transformers {transformers.__version__} BertTokenizer", "cases": [
    {"text": s, "ids": tok(s)["input_ids"]} for s in SENTENCES]}
with open(f"{out_dir}/minilm_tokens.json", "w") as f:
    json.dump(tokens, f, ensure_ascii=False, indent=1)

def attentions(dtype):
    m = BertModel.from_pretrained(model_dir, attn_implementation="eager").to(dtype).eval()
    out = []
    for s in ATTENTION_SENTENCES:
        ids = tok(s, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            a = m(ids, output_attentions=True).attentions  # L x [1, H, T, T]
        out.append({"text": s, "ids": ids[0].tolist(),
                    "attention": [layer[0].tolist() for layer in a]})  # [L][H][T][T]
    return out

doc = {"tool": f"transformers {transformers.__version__} BertModel (eager attention), torch {torch.__version__}",
       "f32": attentions(torch.float32), "f64": attentions(torch.float64)}
with open(f"{out_dir}/minilm_attention.json", "w") as f:
    json.dump(doc, f)
print("wrote", out_dir)
