"""Sources (embedded, local, hub), the policies, and the toxicity classifiers (the tox-block port, evaluators)."""
