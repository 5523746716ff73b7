"""The policies (loaded from a source: `irlnb.sources`) and the toxicity classifiers (tox-block, evaluators)."""
