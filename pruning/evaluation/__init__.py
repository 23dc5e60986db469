"""What a pruned model is worth: perplexity (`perplexity`), lm-eval zero-shot accuracy (`zero_shot`), and speed and
memory of every compressed form (`speed`)."""
