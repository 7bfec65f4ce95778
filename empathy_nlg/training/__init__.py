"""Training commands for perception models and generators."""
