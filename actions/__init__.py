"""Custom actions (rasa-sdk) served by `rasa run actions`."""
