"""Data: sources yield documents, the tokenizer adds BOS, loaders pack rows per island."""
