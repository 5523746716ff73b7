"""Step 5 and the paper's figures: tables and comparisons from saved files, plots, and the reward explorer."""
