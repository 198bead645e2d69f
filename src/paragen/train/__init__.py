"""Training: corpus, tokenizer, language models."""
