"""Commonsense knowledge (experience projection): COMET checkpoints or the offline ATOMIC default."""
