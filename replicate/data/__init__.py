"""Data that ships with installed packages, so nothing is downloaded at run time (DESIGN.md §5).

- ``corpora``: the offline texts (Shakespeare's plays by genre, Python source code of the standard library, ...).
- ``tokenizer``: the byte-level BPE every paper trains on its own corpus (HF ``tokenizers``), cached by content.
- ``lm``: token streams cut into windows, and (seed, step)-pure batches (``Batches``, answer-only ``MaskedBatches``).
- ``evaluation``: held-out evaluation sets, bits per byte, per-position losses and byte budgets.
- ``synthetic``: generated tasks with exact answers (passkey, needle-in-a-haystack at a length and depth, multi-key
  and multi-value retrieval, variable tracking, instruction-style QA from the corpus), a scorer, and exact match by
  teacher-forced argmax.
"""
