"""Building blocks for tiny models with random weights, saved and loaded back the way users keep
the real ones: a word-level tokenizer that transformers saves and reloads as any fast tokenizer."""

from __future__ import annotations

from collections.abc import Iterable


def tiny_word_tokenizer(words: Iterable[str], special_tokens: Iterable[str] = ()):
    """A fast tokenizer over whitespace-separated `words`, plus `special_tokens` that split out of
    running text (`<image>Does` -> `<image>`, `Does`); ids follow the order given, `<unk>` first."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = list(dict.fromkeys(["<unk>", "<s>", "</s>", "<pad>", *words]))
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocabulary)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(list(special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
