"""Persona memory: lasting first-person facts the user states about themselves.

:class:`PersonaExtractor` finds persona sentences in a user message with spaCy dependency
patterns — no list of sentences:

* a first-person subject (``I``/``we`` as ``nsubj``/``nsubjpass``) of a *relation* verb — have,
  work, live, study, teach, own, play, like/love/enjoy, be born, grow up, or a pastime in the
  present simple ("I paint watercolours", "I swim every morning") — or of the copula with a
  noun/number attribute ("I'm a nurse", "I'm 34", "I am 34 years old"), a lasting-state adjective
  ("I'm vegan", "I'm retired") or a place ("I'm from Leeds");
* a first-person possessive subject (``my``/``our`` X) of the copula with a noun/number attribute
  ("my son is 5", "my name is Sam"), of call/name ("my dog is called Max") or of work/live/study
  ("my sister lives in Spain");
* outside those verbs (2026-12-07): a habit or role in the present simple with a thing or a place
  to it ("I drive a bus for the city", "I look after my dad", "I keep bees", "my grandson stays with
  us every weekend"), except verbs of thought, feeling or a passing act (:data:`NOT_HABIT_VERBS`:
  "I need …", "I keep replaying it") and clauses dated as one event ("… next week", "in 3 weeks",
  "on Thursday", "5 times"); a course in the progressive ("I'm training to be a midwife", "I'm
  learning to drive", "I'm doing a PhD"); a move in the past ("I moved here from Poland").

A clause the parser hangs on the next one across a comma is still a main clause ("I'm a
firefighter, been on the job for years"); a name read as a complement still names ("my husband's
name is Raj").

Feelings and momentary states are not persona: the copula with any other adjective ("I am sad"),
feel/seem, progressive aspect ("I'm going to the shop"), a time-of-now modifier ("I have a
headache today"), questions, negated clauses, modal or conditional clauses ("if I had a dog",
"I would like …") and the past (except being born / growing up) are skipped. The words that name
verbs, lasting adjectives and non-persona objects ("I have a question") are small lexicons of
*words*, the patterns are dependency arcs.

Facts are normalised for storage (:func:`normalise_fact`, :func:`fact_key`): case, whitespace,
contractions, articles and final punctuation do not make two facts different.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional, Sequence

from empathy_nlg.text import WEEKDAYS

log = logging.getLogger(__name__)

#: a stored fact (and the client-provided persona) is at most this long
MAX_FACT_CHARS = 500

FIRST_PERSON_SUBJECTS = frozenset({"i", "we"})
FIRST_PERSON_POSSESSIVES = frozenset({"my", "our"})
SUBJECT_DEPS = frozenset({"nsubj", "nsubjpass"})

# verb forms (the project's spaCy pipeline runs without its lemmatizer) → relation lemma
_RELATION_FORMS = {
    "have": "have", "has": "have", "'ve": "have", "got": "have",
    "work": "work", "works": "work", "working": "work",
    "live": "live", "lives": "live", "living": "live",
    "study": "study", "studies": "study", "studying": "study",
    "teach": "teach", "teaches": "teach", "teaching": "teach",
    "own": "own", "owns": "own",
    "play": "play", "plays": "play",
    "like": "like", "likes": "like", "love": "love", "loves": "love", "enjoy": "enjoy", "enjoys": "enjoy",
    "prefer": "prefer", "prefers": "prefer", "speak": "speak", "speaks": "speak",
    "born": "born", "grew": "grow", "raised": "born",
    "called": "called", "named": "called",
    "run": "run", "runs": "run", "volunteer": "volunteer", "volunteers": "volunteer",
    "suffer": "suffer", "suffers": "suffer", "attend": "attend", "attends": "attend",
}
# pastimes told in the present simple are habits ("I paint watercolours", "I knit"): persona
_PASTIME_VERBS = ("paint draw knit sew crochet bake cook sing dance swim climb cycle garden hike surf ski "
                  "skate fish sculpt compose").split()
_RELATION_FORMS.update({form: "pastime" for verb in _PASTIME_VERBS for form in (verb, verb + ("es" if verb.endswith(("sh", "x")) else "s"))})
_BE_FORMS = frozenset({"am", "'m", "is", "'s", "are", "'re", "be", "m", "been"})
# relations a possessive subject ("my sister …") may take
_POSSESSIVE_RELATIONS = frozenset({"work", "live", "study", "teach", "called", "have"})
# relations that hold in the past tense ("I was born in Poland", "I grew up in Leeds")
_PAST_RELATIONS = frozenset({"born", "grow"})
# progressive aspect is a momentary state, except for these ("I'm working as a nurse")
_PROGRESSIVE_OK = frozenset({"work", "live", "study", "teach"})

#: adjectives naming lasting states (the copula with any other adjective is a feeling or a mood)
LASTING_ADJECTIVES = frozenset("""
married divorced single widowed engaged separated retired unemployed self-employed pregnant
vegan vegetarian allergic diabetic disabled blind deaf autistic dyslexic epileptic asthmatic
left-handed right-handed bilingual religious christian muslim jewish hindu buddhist atheist
catholic gay lesbian bisexual transgender trans nonbinary non-binary adopted
""".split())
#: objects of "have" that are no attribute of a person ("I have a question", "we have time")
NON_PERSONA_OBJECTS = frozenset("""
time question questions idea ideas problem problems issue issues feeling feelings chance day
night week weekend moment doubt doubts clue reason trouble choice right way fun plan plans
meeting appointment appointments exam exams test interview date party headache cold fever
hangover lunch dinner breakfast shower look go break rest word talk thought thoughts sense request favour favor
nothing something anything everything it that this one
""".split())
#: modifiers that make a clause momentary ("I have a headache today")
MOMENTARY_WORDS = frozenset("""
today tonight now currently yesterday tomorrow morning afternoon evening moment
""".split())
_MODALS = frozenset({"would", "could", "might", "should", "will", "may", "can", "must", "'d", "'ll", "shall", "wo", "ca"})
_HYPOTHETICAL_MARKS = frozenset({"if", "unless", "when", "whenever", "once", "until", "though", "although", "as", "because"})
_DROP_CHILD_DEPS = frozenset({"punct", "cc", "intj", "discourse", "advcl", "mark", "parataxis", "dep", "meta", "preconj"})
#: verbs that in the present simple tell a thought, a feeling, a request or a passing act, never a
#: habit or a role ("I think …", "I need help", "I keep replaying it"): the habit pattern skips them
NOT_HABIT_VERBS = frozenset("""
think know feel guess suppose hope wish want need mean see hear say tell ask bet reckon believe understand
agree remember forget wonder doubt admit realise realize promise swear apologise apologize thank miss worry
try get go come find hate mind care deserve regret blame trust fear expect imagine assume appreciate
notice love like let give take put make seem sound appear wait sit stand hold start stop begin
finish leave call text message email pray cry laugh do hurt ache kill witness
""".split())
#: words that make a present-simple clause one event to come or just gone, not a habit
ONE_TIME_WORDS = frozenset(("soon", "next", "last", "later", *WEEKDAYS))
#: time nouns that "this"/"next"/"last", "in 3 …" or a count turn into one occasion
_TIME_NOUNS = frozenset("minute minutes hour hours day days week weeks weekend month months year years times time".split())
_ORDINAL_DATE = re.compile(r"^\d{1,2}(st|nd|rd|th)$")
#: what follows "every"/"each" or stands alone to make a present-simple clause a habit
HABIT_ADVERBS = frozenset("usually always often regularly normally weekly daily monthly sometimes".split())
#: progressive verbs of a lasting course ("I'm training to be a midwife", "I'm learning to drive")
_COURSE_PROGRESSIVES = frozenset({"training", "learning", "studying"})
#: what one is doing or taking as a course of study ("I'm doing a PhD in history")
COURSE_OBJECTS = frozenset("""
phd degree masters master's doctorate diploma apprenticeship course courses residency internship
training qualification mba gcses gcse a-levels levels nvq btec
""".split())
_PRONOUN_OBJECTS = frozenset({"it", "this", "that", "you", "them", "him", "her", "those", "these", "one", "everything", "something", "nothing"})


@dataclass(frozen=True)
class PersonaFact:
    """One persona sentence: its display ``text`` and the message (``source``) it came from."""

    text: str
    source: str

    @property
    def key(self) -> str:
        return fact_key(self.text)


_CONTRACTIONS = [
    (re.compile(r"\bi'm\b"), "i am"), (re.compile(r"\bi've\b"), "i have"), (re.compile(r"\bwe're\b"), "we are"),
    (re.compile(r"\bwe've\b"), "we have"), (re.compile(r"\b(\w+)'s (name|age)\b"), r"\1s \2"),
    (re.compile(r"\bim\b"), "i am"), (re.compile(r"\bive\b"), "i have"),
    (re.compile(r"\bhas\b"), "have"), (re.compile(r"\bhave got\b"), "have"), (re.compile(r"\bgot\b"), "have"),
]
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_WORD = re.compile(r"[^\w\s'-]+")
_SPACES = re.compile(r"\s+")


def clean_text(text: str, max_chars: int = MAX_FACT_CHARS) -> str:
    """Whitespace collapsed, typographic quotes straightened, capped at ``max_chars``."""
    text = str(text).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.split())[:max_chars]


def normalise_fact(text: str) -> str:
    """The comparable form of a fact: lower case, contractions expanded, articles, punctuation and
    extra whitespace dropped — "I'm a Nurse." and "i am  nurse" are the same fact."""
    out = clean_text(text).lower()
    for pattern, repl in _CONTRACTIONS:
        out = pattern.sub(repl, out)
    out = _NON_WORD.sub(" ", out)
    out = _ARTICLES.sub(" ", out)
    return _SPACES.sub(" ", out).strip(" '-")


def fact_key(text: str) -> str:
    """Fixed-length key of the normalised fact (the database's uniqueness per sender)."""
    return hashlib.sha256(normalise_fact(text).encode("utf-8")).hexdigest()


def unique_facts(facts: Iterable[PersonaFact]) -> List[PersonaFact]:
    """``facts`` without near-duplicates (same :func:`fact_key`), first occurrence kept, in order."""
    seen = set()
    out: List[PersonaFact] = []
    for fact in facts:
        if fact.text and fact.key not in seen:
            seen.add(fact.key)
            out.append(fact)
    return out


def _lower(token: Any) -> str:
    return token.text.lower().replace("\u2019", "'")


class PersonaExtractor:
    """Persona sentences of a message (see the module doc). ``nlp`` is a spaCy pipeline with a
    tagger and a dependency parser; default: the project's (``knowledge.seeds.load_spacy``),
    loaded on first use."""

    def __init__(self, nlp: Any = None, loader: Optional[Callable[[], Any]] = None) -> None:
        self._nlp = nlp
        self._loader = loader

    @property
    def nlp(self) -> Any:
        if self._nlp is None:
            if self._loader is not None:
                self._nlp = self._loader()
            else:
                from empathy_nlg.knowledge.seeds import load_spacy

                self._nlp = load_spacy()
        return self._nlp

    def extract(self, text: str) -> List[PersonaFact]:
        """The persona facts of ``text`` (de-duplicated, in order); ``[]`` for none."""
        text = clean_text(text or "", max_chars=4 * MAX_FACT_CHARS)
        if not text:
            return []
        return self._facts_of_doc(self.nlp(text), text)

    def extract_many(self, texts: Sequence[str], batch_size: int = 256) -> List[List[PersonaFact]]:
        """:meth:`extract` of each text, parsed in batches (``nlp.pipe``): the same facts, faster
        on many texts (mining a training corpus)."""
        cleaned = [clean_text(t or "", max_chars=4 * MAX_FACT_CHARS) for t in texts]
        out: List[List[PersonaFact]] = [[] for _ in cleaned]
        todo = [i for i, t in enumerate(cleaned) if t]
        for i, doc in zip(todo, self.nlp.pipe([cleaned[i] for i in todo], batch_size=batch_size)):
            out[i] = self._facts_of_doc(doc, cleaned[i])
        return out

    def _facts_of_doc(self, doc: Any, text: str) -> List[PersonaFact]:
        facts = []
        for sent in doc.sents:
            if self._is_question(sent):
                continue
            for token in sent:
                if token.dep_ in SUBJECT_DEPS:
                    fact = self._fact_of(token)
                    if fact:
                        facts.append(PersonaFact(fact, text))
        return unique_facts(facts)

    # -- patterns ---------------------------------------------------------------------------
    @staticmethod
    def _is_question(sent: Any) -> bool:
        if sent.text.rstrip().endswith("?"):
            return True
        root = sent.root
        # "Do I have time", "Am I a bad person", "Can we …": an auxiliary or the copula opens the sentence
        subjects = [c for c in root.children if c.dep_ in SUBJECT_DEPS]
        first = sent[0]
        opens_with_verb = first.dep_ in ("aux", "auxpass") or first.tag_ == "MD" or (first.i == root.i and first.pos_ == "AUX")
        return bool(subjects) and opens_with_verb and first.i < subjects[0].i

    def _fact_of(self, subject: Any) -> Optional[str]:
        verb = subject.head
        if verb.dep_ in ("aux", "auxpass") and verb.head is not verb:
            verb = verb.head  # the parser sometimes hangs the subject on the auxiliary ("we are married")
        if verb is subject:
            return None
        word = _lower(subject)
        # "I", "we", or a pair with the speaker in it ("my husband and I run a bakery": we)
        first_person = word in FIRST_PERSON_SUBJECTS or any(
            c.dep_ == "conj" and _lower(c) in FIRST_PERSON_SUBJECTS for c in subject.children)
        possessive = any(c.dep_ == "poss" and _lower(c) in FIRST_PERSON_POSSESSIVES for c in subject.children) or any(
            c.dep_ == "poss" and any(g.dep_ == "poss" and _lower(g) in FIRST_PERSON_POSSESSIVES for g in c.children)
            for c in subject.children
        )
        if not (first_person or possessive):
            return None
        if not self._lasting(verb, subject, possessive and not first_person):
            return None
        return self._render(verb, subject)

    def _lasting(self, verb: Any, subject: Any, possessive: bool) -> bool:
        children = list(verb.children)
        auxes = [c for c in children if c.dep_ in ("aux", "auxpass")]
        if any(c.dep_ == "neg" for c in children) or any(_lower(a) in _MODALS or a.tag_ == "MD" for a in auxes):
            return False
        if self._hypothetical(verb):
            return False
        if any(_lower(t) in MOMENTARY_WORDS and not any(_lower(d) in ("every", "each") for d in t.children)
               for t in verb.subtree):
            return False  # "… today" is momentary; "… every morning" is a habit
        form = _lower(verb)
        relation = _RELATION_FORMS.get(form)
        is_be = form in _BE_FORMS or (verb.pos_ == "AUX" and not relation)
        past = verb.tag_ == "VBD" or any(a.tag_ == "VBD" for a in auxes)
        if relation == "pastime" and form in _PASTIME_VERBS:
            past = False  # a base form the tagger read as a past ("I knit jumpers")
        have_aux = any(_lower(a) in ("'ve", "have", "'s", "has") for a in auxes)
        if form == "got" and not have_aux:
            return False  # "I got a dog": an event, not a state
        if verb.tag_ == "VBD" and relation == "have" and form != "got":
            return False  # "I had a dog": past
        if form in LASTING_ADJECTIVES and verb.tag_ == "VBN":
            # "I'm retired", "we are married" (parsed as a passive): present tense or the present
            # perfect ("I've been married for thirty years"), not the past ("I was married")
            return any(a.dep_ == "auxpass" and a.tag_ in ("VBP", "VBZ") for a in auxes) or (
                any(_lower(a) == "been" for a in auxes) and have_aux)
        if relation is not None and not is_be:
            if possessive and relation not in _POSSESSIVE_RELATIONS:
                return False
            if relation == "called":
                # "my dog is called Max" (passive, present) / "we have a cat named Tom" is the 'have' arc
                return possessive and verb.dep_ in ("ROOT", "conj")
            if relation == "born":
                return not possessive and subject.dep_ == "nsubjpass"
            if relation == "grow":
                return not possessive and any(c.dep_ == "prt" and _lower(c) == "up" for c in children)
            if past and relation not in _PAST_RELATIONS and form != "got":
                return False
            if verb.tag_ == "VBG":
                if relation not in _PROGRESSIVE_OK:
                    return False
            elif verb.tag_ == "VBN" and form != "got":
                return False
            if relation in ("have", "own"):
                objects = [c for c in children if c.dep_ in ("dobj", "attr")]
                return bool(objects) and all(self._persona_object(o) for o in objects)
            if relation in ("like", "love", "enjoy", "prefer", "play", "speak"):
                objects = [c for c in children if c.dep_ in ("dobj", "xcomp", "ccomp")]
                return bool(objects) and all(_lower(o) not in _PRONOUN_OBJECTS and o.pos_ != "PRON" for o in objects)
            if relation in ("work", "live", "study", "teach", "volunteer", "attend", "run", "suffer"):
                return verb.tag_ in ("VBP", "VBZ", "VB", "VBG") or form == "got"
            if relation == "pastime":  # a habit in the present simple only ("I'm painting the kitchen" is not)
                if any(c.dep_ == "dobj" and c.pos_ == "PRON" for c in children):
                    return False  # "I cook it in the oven": a step told, not a pastime
                return verb.tag_ in ("VBP", "VBZ") or (verb.tag_ == "VBD" and form in _PASTIME_VERBS)
            return True
        if not is_be:
            return self._habit_or_course(verb, form, children, possessive)
        # the copula: present tense only ("I was a nurse" is past; "I've been a nurse for years" is fine)
        if verb.tag_ == "VBD":
            return False
        if form == "been" and not any(_lower(a) in ("'ve", "have", "has", "'s") for a in auxes):
            return False
        for child in children:
            if child.dep_ == "attr":
                return self._persona_attribute(child)
            if child.dep_ == "acomp":
                if _lower(child) in LASTING_ADJECTIVES:
                    return True
                if child.pos_ in ("PROPN", "NUM") and possessive:
                    return True  # "my husband's name is Raj": the parser reads the name as a complement
                # "I'm 34 years old"
                return _lower(child) == "old" and any(t.like_num for t in child.subtree)
            if child.dep_ == "prep" and _lower(child) == "from" and not possessive:
                return True
        return False

    def _habit_or_course(self, verb: Any, form: str, children: Sequence[Any], possessive: bool) -> bool:
        """A clause outside the relation verbs that still tells something lasting:

        * a habit or role in the present simple with a thing or a place to it ("I drive a bus", "I
          look after my dad", "I keep bees", "my grandson stays with us every weekend"); a verb of
          thought, feeling or a passing act (:data:`NOT_HABIT_VERBS`) never, and an object or place
          that is only a pronoun counts only with a habit word ("every weekend", "usually");
        * a course told in the progressive ("I'm training to be a midwife", "I'm learning to drive",
          "I'm doing a PhD in history");
        * a move told in the past ("I moved here from Poland", "we moved to Leeds last year")."""
        if verb.pos_ != "VERB":
            return False
        if verb.tag_ == "VBD" or (verb.tag_ == "VBN" and form == "moved"):
            if form != "moved" or any(c.dep_ == "dobj" for c in children):
                return False
            preps = [c for c in children if c.dep_ == "prep"]
            preps += [g for c in children if c.dep_ == "advmod" for g in c.children if g.dep_ == "prep"]  # "here from"
            return any(_lower(c) in ("from", "to") and self._place(c) for c in preps)
        if verb.tag_ == "VBG":
            if form in _COURSE_PROGRESSIVES and any(c.dep_ == "xcomp" and c.tag_ == "VB" for c in children):
                return True
            return form in ("doing", "taking", "studying") and any(
                c.dep_ == "dobj" and _lower(c) in COURSE_OBJECTS for c in children)
        forms = {form, form[:-1], form[:-2]} if form.endswith("s") else {form}  # "needs", "goes" → need, go
        if verb.tag_ not in (("VBZ",) if possessive else ("VBP",)) or forms & NOT_HABIT_VERBS:
            return False
        if any(self._one_time(t) for t in verb.subtree):
            return False  # "I fly into Colorado Thursday", "we move to Osaka in 3 weeks": one event
        if any(c.dep_ in ("xcomp", "ccomp") or (c.dep_ == "advmod" and _lower(c) == "forward") for c in children):
            return False  # "I keep replaying it", "I look forward to it": what follows is the point, not a habit
        habit = any(_lower(t) in HABIT_ADVERBS or (_lower(t) in ("every", "each") and t.dep_ == "det")
                    for t in verb.subtree)
        things = [c for c in children if c.dep_ == "dobj"]
        things += [g for c in children if c.dep_ == "prep" for g in c.children if g.dep_ == "pobj"]
        if any(self._persona_object(t) for t in things):
            return True
        return habit and bool(things)

    @staticmethod
    def _one_time(token: Any) -> bool:
        """Whether ``token`` dates its clause as one event: "soon", "Thursday", "the 19th", "this
        week", "in 3 weeks", "5 times" (not "every week", "on Thursdays")."""
        word = _lower(token)
        if word in ONE_TIME_WORDS or _ORDINAL_DATE.match(word):
            return True
        if word not in _TIME_NOUNS:
            return False
        kids = list(token.children)
        if any(c.dep_ == "det" and _lower(c) in ("this", "that", "next", "last") for c in kids):
            return True
        return any(c.dep_ == "nummod" or c.like_num for c in kids) and (
            word == "times" or (token.head.dep_ == "prep" and _lower(token.head) in ("in", "within")))

    @staticmethod
    def _place(prep: Any) -> bool:
        """Whether the preposition's object is a place ("from Poland", "to the coast", not "to me")."""
        return any(g.dep_ == "pobj" and g.pos_ in ("PROPN", "NOUN") for g in prep.children)

    @staticmethod
    def _hypothetical(verb: Any) -> bool:
        """Inside a conditional/temporal clause, or under a wish/plan ("I want to live in Spain").
        A clause the parser hangs as ``ccomp`` on a *later* clause across a comma is a main clause of
        a comma splice ("I'm a firefighter, been on the job for years"), not a reported one ("I
        think I'm …", where the ``ccomp`` follows its verb)."""
        node = verb
        while True:
            if any(c.dep_ == "mark" and _lower(c) in _HYPOTHETICAL_MARKS for c in node.children):
                return True
            spliced = (node.dep_ == "ccomp" and node.i < node.head.i
                       and any(c.dep_ == "punct" and c.text in (",", ";") and node.i < c.i < node.head.i for c in node.head.children))
            if spliced:
                return False
            if node.dep_ in ("xcomp", "ccomp", "advcl", "relcl", "acl", "pcomp"):
                return True
            if node.dep_ != "conj" or node.head is node:
                return False
            node = node.head

    @staticmethod
    def _persona_object(obj: Any) -> bool:
        word = _lower(obj)
        if obj.pos_ == "PRON" or word in NON_PERSONA_OBJECTS:
            return False
        if any(c.dep_ == "det" and _lower(c) in ("no", "any") for c in obj.children):
            return False
        return obj.pos_ in ("NOUN", "PROPN", "NUM") or obj.like_num

    @staticmethod
    def _persona_attribute(attr: Any) -> bool:
        if attr.pos_ == "PRON" or _lower(attr) in _PRONOUN_OBJECTS:
            return False
        return attr.pos_ in ("NOUN", "PROPN", "NUM") or attr.like_num

    @staticmethod
    def _render(verb: Any, subject: Any) -> Optional[str]:
        """The clause of ``verb``: its subtree without coordinated clauses, subordinate clauses,
        discourse words and punctuation, from the subject (or its auxiliary) on."""
        keep = set()

        def visit(tok: Any) -> None:
            keep.add(tok.i)
            for child in tok.children:
                if tok is verb and child.dep_ in _DROP_CHILD_DEPS:
                    continue
                if child.dep_ == "conj" and (any(g.dep_ in SUBJECT_DEPS for g in child.children)
                                             or (tok is verb and child.pos_ in ("VERB", "AUX"))):
                    continue  # another clause ("… and I work as a nurse", "… and don't know anyone")
                if child.dep_ in ("punct", "cc") and tok is verb:
                    continue
                visit(child)

        visit(verb)
        start = min([subject.left_edge.i] + [c.i for c in verb.children if c.dep_ in ("aux", "auxpass") and c.i in keep])
        tokens = [t for t in verb.doc if t.i in keep and t.i >= start]
        while tokens and (tokens[-1].is_punct or tokens[-1].dep_ == "cc"):
            tokens.pop()
        if not tokens:
            return None
        text = "".join(t.text_with_ws for t in tokens).strip()
        text = clean_text(text)
        return text[:1].upper() + text[1:] if text else None


def extract_safely(extractor: Optional[PersonaExtractor], text: str) -> List[PersonaFact]:
    """:meth:`PersonaExtractor.extract`, logging (never raising) a failure: a turn never breaks
    because of persona memory."""
    if extractor is None or not (text or "").strip():
        return []
    try:
        return extractor.extract(text)
    except Exception:  # noqa: BLE001 - persona memory must never break a turn
        log.exception("persona extraction failed; the turn goes on without it")
        return []


def persona_text(facts: Sequence[str], max_facts: int, max_chars: int = MAX_FACT_CHARS) -> Optional[str]:
    """The persona the generator gets: the newest ``max_facts`` facts (oldest first, newest last),
    each ending with a full stop, joined; capped at ``max_chars`` on a fact boundary."""
    chosen = [clean_text(f) for f in facts if f and f.strip()][-max_facts:] if max_facts > 0 else []
    parts: List[str] = []
    for fact in reversed(chosen):  # keep the newest when the cap bites
        sentence = fact if fact[-1:] in ".!" else fact + "."
        if sum(len(p) + 1 for p in parts) + len(sentence) > max_chars and parts:
            break
        parts.insert(0, sentence[:max_chars])
    return " ".join(parts) or None
