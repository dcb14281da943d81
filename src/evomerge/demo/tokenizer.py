"""A character-level tokenizer for the demo family.

Why hand-built: the demo must work offline, so no pretrained tokenizer can be
downloaded. One token per character keeps the synthetic skills (digits, letter
reversal, a letter cipher) learnable by a ~1M-parameter model, and the result is
an ordinary `PreTrainedTokenizerFast` that the Auto classes save and load.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]

#: The scripts of the two "foreign languages": one letter per Latin letter, so that each
#: language is a different alphabet (as Japanese is to English), not a shuffle of the same one.
SCRIPTS = {
    "greek": "αβγδεζηθικλμνξοπρστυφχψωϊϋ",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщ",
}
assert all(len(letters) == len(set(letters)) == 26 for letters in SCRIPTS.values())
#: Greek numerals for 0-9: capitals, as in Greek numbering (alpha 1, ..., stigma 6, ...),
#: with omicron for zero, so that Greek sums are written in their own digits.
GREEK_NUMERALS = "ΟΑΒΓΔΕϚΖΗΘ"

SYMBOLS = string.ascii_lowercase + string.digits + " +-=.,:?!'\n" + "".join(SCRIPTS.values()) + GREEK_NUMERALS


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Return the demo tokenizer: ~100 symbols, BOS added, left padding for generation."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in SYMBOLS:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Split on every character; "isolated" keeps each one as its own token.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    bos_id = vocab[BOS]
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    # padding_side must go to the constructor: setting it afterwards is not saved.
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=128,
    )
