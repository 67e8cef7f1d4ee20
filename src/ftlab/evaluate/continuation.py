"""The text that generated tokens add to a prompt, the same on every tokenizer family.

    text = continuation(tokenizer, prompt_ids, new_ids)

Decoding the new tokens alone is wrong on SentencePiece tokenizers (Llama-2, Mistral): their decoder ends with
Strip(left=1), which drops the leading space of whatever it decodes, so a completion whose first token is "▁▁▁"
(four spaces of indentation, one of them the token's "▁") comes out with three. The bigcode evaluation harness
decodes prompt + completion and cuts the prompt off; so does this, with the decoded prompt as the cut (the prompt
may not decode to exactly the string it was encoded from). clean_up_tokenization_spaces is off (it would turn
"a ." into "a.", which no tokenizer spelled). The final text skips special tokens; stop strings are looked for in
the text with them (as lm-eval's and model.generate's stopping criteria decode), so "<|im_end|>" can stop a row.
"""

from __future__ import annotations

import os


def continuations(tokenizer, contexts: list[list[int]], news: list[list[int]], skip_special_tokens: bool = True
                  ) -> list[str]:
    """For each row, the text `new` adds after `context`: decode(context + new) minus decode(context).

    Where decode(context) is not a prefix of decode(context + new) (the context ends in part of a character that
    the new tokens complete, as a byte-fallback window may), the common prefix is cut instead.
    """
    def decode(rows: list[list[int]]) -> list[str]:
        return tokenizer.batch_decode(rows, skip_special_tokens=skip_special_tokens,
                                      clean_up_tokenization_spaces=False)

    wholes = decode([c + n for c, n in zip(contexts, news)])
    heads = decode(contexts)
    return [whole[len(head) if whole.startswith(head) else len(os.path.commonprefix([whole, head])):]
            for whole, head in zip(wholes, heads)]


def continuation(tokenizer, context: list[int], new: list[int], skip_special_tokens: bool = True) -> str:
    """The text `new` adds after `context` (one row of `continuations`)."""
    return continuations(tokenizer, [context], [new], skip_special_tokens)[0]
