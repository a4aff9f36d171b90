"""Byte-level BPE tokenizer for the built-in models, trained with `tokenizers` on the same text.

Special tokens live inside the vocabulary (ids 0-2), so bos/eos/pad never point outside it
(OLMoE's default ids would). Every encoding starts with <|bos|>, like real checkpoints.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2 in this order
MODEL_MAX_LENGTH = 512  # the models' max_position_embeddings


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on `texts`; returns a transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk>
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
    )


def encode_stream(tokenizer, docs: list[str], batch: int = 256) -> np.ndarray:
    """Concatenate `docs` into one token stream, each doc as <|bos|> ... <|eos|>.

    Returns: tokens [n_tokens] int32.
    """
    eos = tokenizer.eos_token_id
    pieces: list[np.ndarray] = []
    for start in range(0, len(docs), batch):
        encoded = tokenizer(docs[start : start + batch], add_special_tokens=True)["input_ids"]
        for ids in encoded:
            pieces.append(np.asarray(ids + [eos], dtype=np.int32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
