"""Text layer: report cleaning, sections and sentences (reports.py), the WordPiece tokenizer saved inside a
checkpoint (tokenizer.py), and the Transformer text encoder with its typed TextSpec (encoder.py).

Floor 2, beside data/: it imports errors.py, schema.py, torch and Hugging Face `tokenizers` (`transformers` only,
lazily, when a local Hugging Face model folder is asked for).
"""
