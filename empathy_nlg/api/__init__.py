"""The engine's HTTP API: /nlg (Rasa's NLG protocol), /perceive, /health."""
