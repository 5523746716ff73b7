"""Rewards on texts: the ground-truth reward R* (step 2), and linear rewards on a backbone's features."""
