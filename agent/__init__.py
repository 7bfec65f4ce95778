"""Rasa-side plugins: NLU components that ask the empathy engine what the user feels, and the NLG
that lets the engine write the empathetic turns (falling back to domain texts when it cannot).

This package runs in the Rasa (Python 3.10) environment and never imports ``empathy_nlg``: the
engine's HTTP API is the contract.
"""
