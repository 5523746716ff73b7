"""Step 3: batched generation, KL-regularised RLHF with TRL, the evaluation of policies, and the accelerate launcher."""
