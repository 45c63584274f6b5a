"""Offline corpora, the byte-level BPE tokenizer, and (seed, step)-pure LM batches."""
