"""A byte-level BPE tokenizer trained offline on a small corpus (toy world and tests).

Real runs load the backbone's own tokenizer from the hub or a local path; this exists because no
tokenizer can be downloaded here, and a tokenizer trained on the toy world's words keeps tiny models
honest (real subword splits, real special tokens).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# CLIP's text tower pools at the configured eos id; the legacy value 2 makes it fall back to an
# argmax over ids (environment.md §11), so the specials are ordered to give eos id 3.
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_bpe_tokenizer(corpus: Iterable[str], vocab_size: int = 1000,
                        extra_special: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus``; every encoded text is ``<s> ... </s>``."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                 bos_token="<s>", eos_token="</s>")
    if extra_special:
        hf.add_special_tokens({"additional_special_tokens": list(extra_special)})
    assert hf.convert_tokens_to_ids("</s>") == EOS_ID and hf.pad_token_id == PAD_ID
    return hf
