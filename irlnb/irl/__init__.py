"""Step 4: inverse RL of a reward from expert vs non-expert demonstrations, judged against R*."""
