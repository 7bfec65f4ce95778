# The two commands a new user needs:  make chat   and   make test
.PHONY: chat serve serve-scaled test setup train-rasa clean help
SHELL := /bin/bash

help:
	@echo "make chat    set up (first run only), start engine + actions + Rasa, talk in this terminal"
	@echo "make serve   set up, start engine + actions + rasa run on :5005 (web chat at /chat/, REST, socket.io, Slack)"
	@echo "make serve-scaled  set up, start two rasa run behind a round-robin proxy on :5205, two engines, PostgreSQL + Redis (docs/deployment.md)"
	@echo "make test    set up, run every test (engine, agent, actions, Rasa stories, end to end)"
	@echo "make setup   only the idempotent setup (environments, backbone cache, Rasa model)"

setup:
	@bash scripts/setup.sh

chat: setup
	@.venvs/engine/bin/python scripts/stack.py chat

serve: setup
	@.venvs/engine/bin/python scripts/stack.py serve

serve-scaled: setup
	@.venvs/engine/bin/python scripts/stack.py serve-scaled

test: setup
	@bash scripts/test.sh

clean:
	rm -rf .venvs .stamps models results var logs
