"""The engine: perception, generation and state for one request at a time.

:class:`EmpathyEngine` is what the HTTP layer calls. It knows nothing about HTTP; it takes plain
data (the Rasa NLG request, a /perceive request) and returns plain data. Models are loaded once
by :meth:`EmpathyEngine.load`; a lock serialises model calls (they are CPU-bound; on a GPU host
one process per device is the unit of scale).

Per user turn the engine persists: sender, turn index, user text, emotion (top-k), polarity,
causes, CM, crisis flag — and per reply: response name, text, generator and version, knowledge,
latency. The emotion trajectory stored for earlier turns conditions the generator.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from empathy_nlg.batching import GenerationBatcher
from empathy_nlg.dialogue import DialogueView, Utterance, dialogue_from_events, history_from_roles, turn_key
from empathy_nlg.decoding.conversation import ConversationReranker, RerankSettings, choose_reply, story_polarity
from empathy_nlg.decoding.names import names_in, with_names
from empathy_nlg.domain import DomainResponses, UnknownResponseError
from empathy_nlg.generators.base import GenerationRequest, Generator, create_generator
from empathy_nlg.perception.types import Perception
from empathy_nlg.persona import MAX_FACT_CHARS, PersonaExtractor, clean_text, extract_safely, fact_key, persona_text
from empathy_nlg.safety import (CLEARED_GENERATOR, CRISIS_RESPONSES, SCRIPTED_RESPONSES, STRONG_CONCERN, SafetyDecision,
                                SafetyPolicy)
from empathy_nlg.state.repository import PersonaRecord, ReplyRecord, StateRepository, TurnRecord, positive_shares

log = logging.getLogger(__name__)

CRISIS_PREFIX = "utter_crisis_"
#: the Rasa intent that asks to forget the persona (actions/persona.py): nothing is learnt from it
FORGET_PERSONA_INTENT = "forget_persona"
#: what a fact from the client's ``persona`` slot (session metadata) records as its source
PERSONA_SLOT_SOURCE = "(persona given by the client at session start)"


class EngineNotReady(RuntimeError):
    pass


class DeadlinePassed(RuntimeError):
    """The client stopped waiting for this request (its deadline passed): nothing was stored, and the
    reply, if one was made, is thrown away, since the client answers from elsewhere (the agent's NLG
    from the domain) and the state must hold only what the user saw."""


def check_deadline(deadline: Optional[float], stage: str) -> None:
    """Raise :class:`DeadlinePassed` when ``deadline`` (a ``time.monotonic()`` value) has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlinePassed(f"the client's deadline passed {stage}")


class StageClock:
    """Milliseconds per stage of one request (``custom.timing``): ``with clock("perception"): …``
    adds the block's wall time to that stage."""

    def __init__(self) -> None:
        self.ms: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - start) * 1000

    def add(self, stage: str, ms: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + float(ms)

    def rounded(self) -> Dict[str, float]:
        return {k: round(v, 1) for k, v in self.ms.items()}


class EmpathyEngine:
    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        perceiver: Any,
        generator: Generator,
        repository: StateRepository,
        domain: DomainResponses,
        reranker: Optional[ConversationReranker] = None,
        exemplars: Any = None,
        persona_extractor: Optional[PersonaExtractor | bool] = None,
    ) -> None:
        self.settings = settings
        self.perceiver = perceiver
        self.generator = generator
        self.repository = repository
        self.domain = domain
        gen = settings["generation"]
        self.generated_responses = {r for r in gen["generated_responses"] if not r.startswith(CRISIS_PREFIX)}
        self.history_turns = int(settings["server"]["history_turns"])
        conversation = dict(gen.get("conversation") or {})
        self.exemplar_settings = {"enabled": True, "k": 3, "min_score": 0.55, **dict(conversation.get("exemplars") or {})}
        self.story_polarity = float(conversation.get("story_polarity", 0.0))
        self.names = bool(conversation.get("names", False))
        self.reranker = reranker
        self.exemplars = exemplars if self.exemplar_settings["enabled"] else None
        self.persona_settings = {"enabled": True, "max_facts": 5, "max_chars": MAX_FACT_CHARS, **dict(settings.get("persona") or {})}
        # spaCy loads on the first message (or at load, see :meth:`load`); None: no persona memory
        # (``False``: asked for none — the pipeline did not load — the stored facts are still used)
        self.persona_extractor = ((persona_extractor if persona_extractor is not None else PersonaExtractor()) or None
                                  if self.persona_settings["enabled"] else None)
        # Two locks, not one: perception (Rasa's NLU calls /perceive synchronously, so a wait here
        # stalls every conversation in Rasa) never waits for a decoding, and concurrent requests
        # reach the batcher while it decodes and are decoded together (each with its own
        # conditioning and steering).
        self._perception_lock = threading.Lock()
        self._generation_lock = threading.Lock()
        batching = {"max_batch": 8, "window_ms": 0.0, **dict(gen.get("batching") or {})}
        self.batcher = GenerationBatcher(lambda requests: self.generator.generate(requests), self._generation_lock,
                                         max_batch=int(batching["max_batch"]),
                                         window_ms=float(batching["window_ms"]))
        missing = [r for r in CRISIS_RESPONSES if r not in domain]
        if missing:
            raise ValueError(f"the domain must define the scripted crisis responses {missing}")
        safety = dict(settings.get("safety") or {})
        # the NLU's crisis reading asks the safety question only where the detector is not sure the
        # message is ordinary (its cue gate; 0 for a perceiver without a classifier: always asks)
        detector = getattr(perceiver, "crisis", None)
        self.safety = SafetyPolicy(domain, followup_turns=int(safety.get("followup_turns", 3)),
                                   nlu_floor=float(getattr(detector, "lexical_floor", 0.0) or 0.0),
                                   strong_concern=float(safety.get("strong_concern", STRONG_CONCERN)))
        scripted = [r for r in SCRIPTED_RESPONSES if r not in domain]
        if scripted:
            log.warning("the domain lacks the scripted safety responses %s: those steps fall back to the crisis "
                        "resources", scripted)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Mapping[str, Any]) -> "EmpathyEngine":
        """Load every model and open the database (migrating it). Takes seconds to a minute."""
        from empathy_nlg.perception.perceiver import Perceiver

        p = settings["perception"]
        start = time.perf_counter()
        repository = StateRepository(settings["state"]["database_url"])
        repository.migrate()
        domain = DomainResponses.load(settings["domain"])
        extra = (settings.get("safety") or {}).get("responses")
        if extra:
            if Path(extra).is_file():
                domain.update(DomainResponses.load(extra))
            else:
                log.warning("safety responses %s not found: the scripted follow-ups fall back to the crisis resources", extra)
        perceiver = Perceiver.load(artifacts_dir=p.get("artifacts"), encoder_path=p.get("encoder"), device=p.get("device"),
                                   crisis_encoder=p.get("crisis_encoder"), crisis_dtype=p.get("crisis_encoder_dtype") or "auto",
                                   emotion_tuned_weight=float(p.get("emotion_tuned_weight") or 0.0))
        name = settings["generation"]["generator"]
        gen_config = dict(settings["generation"].get("generators", {}).get(name, {}))
        generator = create_generator(name, gen_config)
        reranker, exemplars = build_conversation_decoding(settings, perceiver, p.get("artifacts"))
        extractor = None
        if (settings.get("persona") or {}).get("enabled", True):
            extractor = PersonaExtractor()
            try:
                extractor.nlp  # at load, not on the first user's turn
            except Exception:  # noqa: BLE001 - persona memory is optional; turns go on without it
                log.exception("the persona extractor's spaCy pipeline did not load: no new persona facts are learnt "
                              "(the stored ones still reach the generator)")
                extractor = False
        log.info("engine loaded in %.1f s (generator %s %s; reranker %s; exemplars %s)", time.perf_counter() - start, name,
                 generator.version, "on" if reranker else "off", exemplars.version if exemplars else "none")
        return cls(settings, perceiver=perceiver, generator=generator, repository=repository, domain=domain,
                   reranker=reranker, exemplars=exemplars, persona_extractor=extractor)

    def describe(self) -> Dict[str, Any]:
        return {
            "generator": self.generator.name,
            "generator_version": self.generator.version,
            "reranker": self.reranker is not None,
            "exemplars": self.exemplars.describe() if self.exemplars is not None else None,
            "perception": dict(getattr(self.perceiver, "versions", {})),
            "generated_responses": sorted(self.generated_responses),
            "batching": self.batcher.describe(),
            "persona": {k: self.persona_settings[k] for k in ("enabled", "max_facts")},
        }

    def warm_up(self) -> float:
        """One perception and one generation of a made-up message, nothing stored, before the
        engine reports ready: the first real turn is then not the slow one (lazy kernels, first
        allocations). Returns the seconds it took."""
        start = time.perf_counter()
        dialogue = [Utterance("speaker", "I finally finished the painting I started last winter.")]
        with self._perception_lock:
            perception = self.perceiver.perceive(dialogue)
        with self._generation_lock:
            self.generator.generate([GenerationRequest(context=dialogue, perception=perception)])
        return time.perf_counter() - start

    # -- perception -------------------------------------------------------------------------
    def _perceive(self, dialogue: Sequence[Utterance]) -> Perception:
        with self._perception_lock:
            return self.perceiver.perceive(list(dialogue))

    def perceive(
        self,
        text: str,
        history: Sequence[Mapping[str, str]] = (),
        sender_id: Optional[str] = None,
        message_id: Optional[str] = None,
        turn_index: Optional[int] = None,
    ) -> Tuple[Perception, float]:
        """Perceive ``text`` in its context; persist the turn when the sender is known.

        ``turn_index`` (the client's count of earlier user turns) only names the turn when the
        client sends no ``message_id``; the stored index is assigned by the repository.
        """
        start = time.perf_counter()
        dialogue = history_from_roles(history, text, self.history_turns)
        perception = self._perceive(dialogue)
        if sender_id is not None:
            # ``turn_index`` counts the user's earlier messages: this one is number turn_index + 1
            key = turn_key(message_id, (turn_index or 0) + 1, text)
            facts = [] if perception.crisis else self._new_facts(sender_id, key, text)
            self.repository.record_turn(TurnRecord(sender_id=sender_id, message_id=key, user_text=text, perception=perception),
                                        facts)
        return perception, (time.perf_counter() - start) * 1000

    # -- NLG --------------------------------------------------------------------------------
    def nlg(self, request: Mapping[str, Any], deadline: Optional[float] = None) -> Dict[str, Any]:
        """Answer one Rasa NLG request ``{response, id, arguments, tracker, channel}``.

        ``deadline`` (``time.monotonic()``): when the client stops waiting. Past it, before any work
        or before the one write, :class:`DeadlinePassed` is raised and nothing is stored."""
        check_deadline(deadline, "before the request was started (it waited in the queue)")
        start = time.perf_counter()
        response_name: str = request["response"]
        tracker = request["tracker"]
        sender_id: str = tracker["sender_id"]
        channel = (request.get("channel") or {}).get("name")
        slots = dict(tracker.get("slots") or {})
        view = dialogue_from_events(tracker.get("events") or [], self.history_turns)
        if response_name not in self.generated_responses and response_name not in self.domain:
            raise UnknownResponseError(f"response {response_name!r} is not defined in the domain")

        perception: Optional[Perception] = None
        knowledge: Dict[str, List[str]] = {}
        details: Dict[str, Any] = {}
        turn: Optional[TurnRecord] = None
        turn_index: Optional[int] = None
        clock = StageClock()
        if view.message_key is not None:
            with clock("perception"):
                perception = self._perception_for(view)
            turn = TurnRecord(sender_id, view.message_key, view.last_user_text or "", perception)
            # read only: the request writes once, turn and reply together, when its reply is known
            # (record_reply below), so a failure on the way leaves no half-written turn
            with clock("sql"):
                turn_index = self.repository.turn_index_of(sender_id, view.message_key)

        generate = bool(response_name in self.generated_responses and view.turns and view.turns[-1].role == "speaker")
        decision = SafetyDecision(None, [])
        # what the assistant already said to this sender (read once: the safety steps and the decoding use it)
        with clock("sql"):
            stored_replies = self.repository.recent_replies(sender_id, limit=50) if turn is not None else []
            earlier_turns = (self.repository.recent_turns(sender_id, limit=self.safety.followup_turns, before_turn=turn_index)
                             if turn is not None else [])
        if turn is not None:
            override = view.last_parse_data.get("crisis_override")
            nlu_disagrees = isinstance(override, Mapping) and override.get("demoted") == "crisis" and override.get("ask") is True
            decision = self.safety.decide(response_name, generate, perception, earlier_turns, stored_replies,
                                          view.last_user_text or "", nlu_disagrees=nlu_disagrees)
            # A crisis turn the detector did not flag is stored as one all the same, so the follow-ups
            # apply: Rasa's own crisis route (the NLU crisis intent) caught it, or the person said
            # "yes" to the safety question.
            marked = ("rasa:crisis-route" if response_name == "utter_crisis_support"
                      else "checkin:affirmed" if decision.state == "affirmed" else None)
            if marked and perception is not None and not perception.crisis:
                perception.crisis = True
                perception.crisis_reasons = sorted(set(perception.crisis_reasons) | {marked})
        # Persona memory: what this message says about the user, never from a crisis turn or its
        # scripted follow-ups, nor from the request to forget it; written with the turn (one write)
        facts: List[PersonaRecord] = []
        if turn is not None and not (perception is not None and perception.crisis) and not decision.responses:
            intent = view.last_parse_data.get("intent")
            if not (isinstance(intent, Mapping) and intent.get("name") == FORGET_PERSONA_INTENT):
                facts = self._slot_facts(sender_id, view.message_key, slots)
                with clock("persona"):
                    facts += self._new_facts(sender_id, view.message_key, view.last_user_text or "")
        if decision.responses:
            # Safety: around a crisis the reply is scripted, never generated, whatever Rasa asked for.
            message = self.safety.render(decision, slots, channel, [r["text"] for r in stored_replies])
            generator_name = {"crisis": "crisis-override", "affirmed": "crisis-override", "checkin": "crisis-checkin",
                              "clarify": "crisis-clarify", "followup": "crisis-followup",
                              "cleared": CLEARED_GENERATOR}[decision.state]
            version = "scripted"
            details = {"safety": {"state": decision.state, "reason": decision.reason, "responses": decision.responses}}
        elif generate:
            message, generator_name, version, knowledge, details = self._generate(
                response_name, view, perception, sender_id, turn_index, slots, channel, stored_replies, clock, facts)
        else:
            message = self.domain.render(response_name, slots, channel)
            generator_name, version = "template", "domain"

        latency_ms = (time.perf_counter() - start) * 1000
        check_deadline(deadline, f"while the reply was made ({latency_ms / 1000:.1f} s)")
        write_start = time.perf_counter()
        if turn is not None:
            self.repository.record_reply(
                turn,
                ReplyRecord(
                    response_name=response_name,
                    text=message.get("text") or "",
                    generator=generator_name,
                    generator_version=version,
                    latency_ms=latency_ms,
                    knowledge=knowledge,
                ),
                facts,
                unlearn=bool(perception is not None and perception.crisis),
            )
        clock.add("sql", (time.perf_counter() - write_start) * 1000)
        message["custom"] = {
            "emotion": perception.top_k(3) if perception else None,
            "polarity": perception.polarity if perception else None,
            "causes": [{"index": c.index, "text": c.text, "score": round(c.score, 4)} for c in perception.causes] if perception else [],
            "cm": perception.cm_plan if perception else [],
            "cm_probs": {k: round(v, 4) for k, v in perception.cm.items()} if perception else {},
            "crisis": bool(perception.crisis) if perception else False,
            "safety": decision.state,
            "knowledge": knowledge,
            "generation": details,
            "generator": generator_name,
            "generator_version": version,
            "response": response_name,
            "turn_index": turn_index,
            "latency_ms": round(latency_ms, 1),
            # where the time went (ms): perception (or its crisis re-check), sql (reads and the one
            # write), and for a generated reply the generator's own stages and the conversation reranker
            "timing": clock.rounded(),
        }
        return message

    def _perception_for(self, view: DialogueView) -> Perception:
        """Use what the Rasa components already perceived; compute only what is missing — except
        the crisis flag, which the engine always checks itself (see :meth:`_recheck_crisis`)."""
        dialogue = list(view.turns)
        if not dialogue or dialogue[-1].role != "speaker":
            dialogue.append(Utterance("speaker", view.last_user_text or ""))
        stored = view.last_parse_data.get("empathy")
        if isinstance(stored, Mapping) and stored.get("emotion_probs"):
            try:
                perception = Perception.from_dict(dict(stored))
            except (TypeError, ValueError, KeyError) as exc:
                log.warning("ignoring malformed parse_data.empathy (%s); perceiving again", exc)
            else:
                return self._recheck_crisis(perception, dialogue)
        return self._perceive(dialogue)

    def _recheck_crisis(self, perception: Perception, dialogue: Sequence[Utterance]) -> Perception:
        """The client's copy of perception (``parse_data.empathy``, echoed by Rasa) is never trusted
        for safety: the engine runs its own crisis detector on the same turns (embeddings cached, a
        few ms) and keeps the union — a flag can be added here, never removed."""
        check = getattr(self.perceiver, "crisis_check", None)
        if check is None:
            return perception
        with self._perception_lock:
            own = check(list(dialogue))
        if own.crisis and not perception.crisis:
            perception.crisis = True
            perception.crisis_reasons = sorted(set(perception.crisis_reasons) | set(own.reasons) | {"engine:recheck"})
        perception.crisis_score = max(float(perception.crisis_score), float(own.score))
        perception.crisis_concern = bool(perception.crisis_concern or own.concern)
        return perception

    @staticmethod
    def earlier_replies(stored: Sequence[Mapping[str, Any]], view: DialogueView, limit: int = 20) -> List[str]:
        """What the assistant already said to this sender: the replies stored in SQL and the tracker's
        bot utterances (a client may send a trimmed tracker), oldest first, de-duplicated."""
        seen: Dict[str, None] = {}
        for text in [r["text"] for r in stored] + list(view.bot_texts):
            for part in text.split("\n\n"):  # multi-message replies (crisis scripts) count per message
                if part.strip():
                    seen.setdefault(part.strip(), None)
        return list(seen)[-limit:]

    def _new_facts(self, sender_id: str, message_id: Optional[str], text: str) -> List[PersonaRecord]:
        """The persona facts of one user message (``[]`` when persona memory is off or the extractor
        fails: logged, the turn goes on)."""
        if self.persona_extractor is None:
            return []
        return [PersonaRecord(sender_id, f.text, f.source, message_id) for f in extract_safely(self.persona_extractor, text)]

    def _slot_facts(self, sender_id: str, message_id: Optional[str], slots: Mapping[str, Any]) -> List[PersonaRecord]:
        """The client-provided persona (the ``persona`` slot, filled at session start from the client's
        metadata, actions/session.py) is remembered as a fact of its own."""
        slot = slots.get("persona")
        if not self.persona_settings["enabled"] or not isinstance(slot, str) or not slot.strip():
            return []
        return [PersonaRecord(sender_id, clean_text(slot, MAX_FACT_CHARS), PERSONA_SLOT_SOURCE, None)]

    def _persona(self, sender_id: str, slots: Mapping[str, Any], new_facts: Sequence[PersonaRecord] = ()) -> Optional[str]:
        """What the user told about themselves: the facts remembered in SQL (they outlive Rasa's
        sessions) and this turn's (stored with the turn), newest last, at most ``persona.max_facts``;
        a persona kept by an older version (the conversation's ``persona`` column) counts as the
        oldest fact. ``None`` when there is none or persona memory is off."""
        if not self.persona_settings["enabled"]:
            return None
        max_facts = int(self.persona_settings["max_facts"])
        if max_facts <= 0:
            return None
        texts: Dict[str, str] = {}
        legacy = self.repository.persona(sender_id)
        if legacy:
            texts[fact_key(legacy)] = legacy
        for row in self.repository.persona_facts(sender_id, limit=max_facts):
            texts.setdefault(fact_key(row["fact"]), row["fact"])
        for fact in list(new_facts) or self._slot_facts(sender_id, None, slots):
            key = fact_key(fact.fact)
            texts.pop(key, None)  # said again: it is the newest
            texts[key] = fact.fact
        return persona_text(list(texts.values()), max_facts, int(self.persona_settings["max_chars"]))

    def _generate(self, response_name, view, perception, sender_id, turn_index, slots, channel, stored_replies=(),
                  clock: Optional[StageClock] = None, new_facts: Sequence[PersonaRecord] = ()):
        clock = clock or StageClock()
        with clock("sql"):
            history = self.repository.emotion_history(sender_id, before_turn=turn_index, limit=5)
        trajectory = [turn["emotion"] for turn in history]
        # the story's polarity so far: its last three perceived turns
        story = positive_shares(history[-3:]) if self.story_polarity > 0 and perception is not None else []
        earlier = self.earlier_replies(stored_replies, view)
        # the tone the reply answers: this message in the light of the story so far
        heard = perception
        if story:
            heard = story_polarity(perception, story, self.story_polarity)
        request = GenerationRequest(
            context=list(view.turns),
            perception=heard,
            emotion_trajectory=trajectory,
            persona=self._persona(sender_id, slots, new_facts),
            earlier_replies=earlier,
        )
        with clock("generator"):  # waiting for the batcher's turn included
            result = self.batcher.submit(request)
        for stage, ms in ((result.details or {}).get("timing") or {}).items():
            clock.add(f"generator.{stage}", ms)
        text, source, rerank = result.text.strip(), "generator", None
        if self.reranker is not None:
            with self._perception_lock, clock("rerank"):
                text, source, rerank = self._rerank(result, view, heard, earlier)
        named = None
        if text and self.names:
            # the people and animals the user named, from the persona memory (older) and this conversation
            text, named = with_names(text, names_in([request.persona or "", *view.user_texts]))
        if text:
            details = {k: v for k, v in (result.details or {}).items() if k not in ("raw", "system_prompt", "timing")}
            if rerank is not None:
                details["rerank"] = rerank
            if named:
                details["names"] = named
            if heard is not perception:
                details["answered_polarity"] = {"polarity": heard.polarity, "prob": round(float(heard.polarity_prob), 4),
                                                "story_weight": self.story_polarity}
            details["source"] = source
            generator = result.generator if source == "generator" else f"{result.generator}+exemplar"
            return {"text": text}, generator, result.version, result.knowledge, details
        log.warning("generator %s returned an empty reply for %s; using the domain text", result.generator, response_name)
        return self.domain.render(response_name, slots, channel), "template-fallback", "domain", {}, {}

    def _rerank(self, result, view: DialogueView, perception: Optional[Perception], earlier: Sequence[str]):
        """The conversation reranker's choice among the generator's and the exemplars' candidates."""
        return choose_reply(result, list(view.user_texts) or [view.last_user_text or ""], perception, earlier,
                            self.reranker, self.exemplars, self.perceiver.embed if self.exemplars is not None else None,
                            int(self.exemplar_settings["k"]), float(self.exemplar_settings["min_score"]))


def build_conversation_decoding(settings: Mapping[str, Any], perceiver: Any, artifacts_dir: Optional[str]):
    """The conversation reranker (with the reply-polarity and EPITOME heads) and the exemplar index,
    as ``generation.conversation`` asks; each is ``None`` when disabled or unavailable."""
    from empathy_nlg.knowledge.exemplars import ExemplarIndex
    from empathy_nlg.perception.cm import load_response_classifiers
    from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR
    from empathy_nlg.perception.reply_polarity import ReplyPolarity

    conversation = dict(settings["generation"].get("conversation") or {})
    rerank = RerankSettings.from_mapping(conversation.get("rerank"))
    reranker = None
    if rerank.enabled:
        art = artifacts_dir or DEFAULT_ARTIFACTS_DIR
        polarity = ReplyPolarity.load_or_none(art)
        if polarity is None:
            log.warning("no reply-polarity head in %s: the reranker's polarity term is neutral "
                        "(train it: empathy-nlg train-perception --task reply_polarity)", art)
        try:
            cm = load_response_classifiers(art, encoder=perceiver.encoder).proba_from_embeddings
        except FileNotFoundError as exc:
            log.warning("EPITOME response heads unavailable (%s): the reranker's cm term is neutral", exc)
            cm = None
        reranker = ConversationReranker(rerank, perceiver.embed, polarity.predict_proba if polarity else None, cm)
    exemplars = None
    ex = {"enabled": True, **dict(conversation.get("exemplars") or {})}
    if ex["enabled"]:
        exemplars = ExemplarIndex.load(ex.get("cache_dir"))
        if exemplars is None:
            log.warning("no exemplar index (build it: empathy-nlg knowledge exemplars): replies without exemplar candidates")
    return reranker, exemplars
