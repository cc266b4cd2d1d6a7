"""A small byte-level BPE tokenizer built offline, with Qwen's chat and vision special tokens.

Tiny test models and random-weight benchmarks need a tokenizer without the Hub. This one is trained in a
few milliseconds, deterministically, on the prompt template and some task words, so prompts tokenise to a
realistic length (about the same number of tokens as Qwen's own tokenizer gives). Unknown words fall back
to bytes, so every instruction is representable. It is saved as `tokenizer.json` in the checkpoint, like a
real Qwen tokenizer, and loaded with the `tokenizers` library.
"""

from __future__ import annotations

import json

from xr0.config import BPE_VOCAB, tiny_special_ids

_CORPUS = [
    "The following observations are captured from multiple views.",
    "# Ego View", "# Left-Wrist View", "# Right-Wrist View", "# Base View", "# External Camera View",
    "Generate robot actions for the task:",
    "Transfer the cube to the other arm. /no_cot",
    "Insert the peg into the socket. /no_cot",
    "Pick up the red block and put it in the bowl.",
    "Fold the towel, open the drawer, stack the cups, move the object to the left and right.",
    "user", "assistant", "<cot></cot>",
]  # fmt: skip


def build_tokenizer(special_ids: dict[str, int] | None = None):
    """Train the byte-level BPE and place the special tokens at `special_ids` (default: the tiny layout;
    pass `QWEN_SPECIAL_TOKENS` to match the real Qwen ids, as the random-weight `full` benchmark does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    special_ids = special_ids or tiny_special_ids()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 3, trainer)
    # Put each special token at its id: in the model vocabulary and as an added (special) token.
    spec = json.loads(tok.to_str())
    if max(spec["model"]["vocab"].values()) >= min(special_ids.values()):
        raise ValueError("special token ids must lie above the BPE vocabulary")
    spec["model"]["vocab"].update(special_ids)
    spec["added_tokens"] = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i in sorted(special_ids.items(), key=lambda kv: kv[1])
    ]
    return Tokenizer.from_str(json.dumps(spec))
