"""Shared text helpers: word tokens, content words, overlap measures.

One home for the small lexical functions that decoding (reranking against earlier replies,
grounding in what the user said) and evaluation (the conversation benchmark) must compute the
same way. Pure Python, no model.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Set

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
#: a sentence ends at ``.``, ``!`` or ``?`` followed by white space
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

#: the days of the week and the months, lower-cased (time words, never names or lasting facts)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")

#: function words, pronouns, auxiliaries and listener fillers: never count as "content".
STOPWORDS = frozenset("""
a an the and or but if so to of in on at for with from by as is are was were be been being am
i i'm i've i'd i'll me my mine myself you you're you've your yours yourself he him his she her hers
it it's its we us our they them their this that these those there here what when where how why who
which whom whose have has had having do does did doing done not no yes yeah yep nope ok okay oh ah
just very really too can could would should will shall may might must get got getting go going went
gone make made thing things some any all each every other others one about into out up down over
again also still even than then now well much many more most such only own same lot lots bit kind
sort like feel feeling feels felt sound sounds sounded hear heard know knew think thought want
wanted say said tell told sure maybe though because while don't didn't doesn't can't won't wasn't
isn't aren't that's what's there's let's im ive dont didnt cant wont thats whats u ur lol haha
hmm um uh wow hey hi hello thanks thank please sorry glad happy sad great good bad nice
""".split())


# The metric tokenizer (BLEU, Dist, top-5 share: empathy_nlg.evaluation.metrics states its definition)
TOKENIZER_NAME = "regex-treebank-lc"

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "`": "'"})
_NT = re.compile(r"(\w)n't\b")
_CLITIC = re.compile(r"(\w)'(m|s|re|ve|ll|d)\b")
_TOKEN = re.compile(r"n't\b|'(?:m|s|re|ve|ll|d)\b|\.\.\.|\w+|[^\w\s]")


def tokenize(text: str) -> List[str]:
    """Lower-cased word/punctuation tokens of ``text`` (see :mod:`empathy_nlg.evaluation.metrics`)."""
    text = (text or "").lower().translate(_QUOTES)
    text = _NT.sub(r"\1 n't", text)
    text = _CLITIC.sub(r"\1 '\2", text)
    return _TOKEN.findall(text)


def normalise_reply(text: str) -> str:
    """The form under which two replies count as "the same sentence" (tokens joined by spaces)."""
    return " ".join(tokenize(text))


def words(text: str) -> List[str]:
    """Lower-cased word tokens (letters/digits, with an inner apostrophe kept)."""
    return _WORD.findall((text or "").lower().replace("’", "'"))


def split_sentences(text: str) -> List[str]:
    """The sentences of ``text``, cut after ``.``, ``!`` or ``?`` followed by white space (an
    abbreviation such as "Dr. Li" is cut too). Pieces keep their punctuation and are not stripped."""
    return _SENTENCE_END.split(text)


def stem(word: str) -> str:
    """A light suffix strip so that "kittens"/"kitten", "worked"/"work" meet (words > 4 chars)."""
    if len(word) > 4:
        for suffix in ("ing", "ed", "es", "s"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                return word[: -len(suffix)]
    return word


def content_words(text: str, stopwords: Iterable[str] = STOPWORDS, stemmed: bool = True) -> Set[str]:
    """Content words of ``text``, stemmed unless ``stemmed`` is False: no stopwords, no numbers, at
    least 3 characters."""
    stop = stopwords if isinstance(stopwords, (set, frozenset)) else set(stopwords)
    found = (w for w in words(text) if len(w) >= 3 and w not in stop and not w.isdigit())
    return {stem(w) for w in found} if stemmed else set(found)


def jaccard(a: str, b: str) -> float:
    """Token-set Jaccard similarity of two texts (0 when both are empty)."""
    sa, sb = set(words(a)), set(words(b))
    if not sa and not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


def max_jaccard(text: str, others: Sequence[str]) -> float:
    return max((jaccard(text, o) for o in others), default=0.0)


def parrots(text: str, said: Sequence[str], n: int = 6) -> bool:
    """Whether ``text`` copies ``n`` or more consecutive words of something the user said ("It means
    we can actually put something aside each month." to "…which isn't life changing but it means we
    can actually put something aside each month"): a reply that hands the user's words back."""
    w = words(text)
    if len(w) < n:
        return False
    grams = {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    for turn in said:
        u = words(turn)
        if any(tuple(u[i:i + n]) in grams for i in range(len(u) - n + 1)):
            return True
    return False


def opening(text: str, n: int = 3) -> Optional[tuple]:
    """The first ``n`` word tokens (None when the text is shorter than ``n`` words)."""
    w = words(text)
    return tuple(w[:n]) if len(w) >= n else None


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """Best unigram F1 of ``prediction`` against any reference (SQuAD-style bag of tokens)."""
    pred = words(prediction)
    best = 0.0
    for ref in references:
        gold = words(ref)
        if not pred or not gold:
            continue
        common = 0
        pool = list(gold)
        for t in pred:
            if t in pool:
                pool.remove(t)
                common += 1
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


#: phrases that answer bad news (sympathy) and good news (celebration): the lexical side of the
#: reranker's polarity guard ("no 'sorry to hear that' to good news, no 'that's awesome' to bad news")
SYMPATHY = re.compile(r"\b(?:sorry to hear|so sorry|i'?m sorry|oh no|that'?s terrible|how awful|that'?s awful|"
                      r"that sucks|that'?s rough|that'?s tough|heartbreaking|my condolences|sorry for your loss|"
                      r"must be (?:so |really )?(?:hard|difficult|tough|painful)|"
                      # v2 (sixteenth session): what else a person reads as condolence
                      r"(?:that'?s|how|so) sad|that'?s (?:hard|difficult|painful)|hang in there|poor thing|"
                      r"sounds (?:so |really )?(?:hard|difficult|tough|rough|painful))\b", re.IGNORECASE)
CELEBRATION = re.compile(r"\b(?:congrat\w*|awesome|amazing|great news|wonderful|fantastic|so happy for you|"
                         r"glad to hear|that'?s great|good for you|well done|proud of you|how exciting|so exciting|"
                         r"that'?s exciting|"
                         # v2 (sixteenth session): "I'm sure he'll be happy for you!" to a washed-out camping
                         # trip, "That's nice of him" to a breakup, "That sounds like fun" to a grief turn
                         # ("good news" is not here: "I hope you get good news soon" is kind to bad news)
                         r"happy for you|that'?s (?:so |really )?(?:nice|cool|great)|so cool|lucky you|"
                         r"sounds (?:like )?(?:so much |a lot of )?fun|sounds great|what a great|how wonderful|"
                         r"way to go|(?:nice|great|good) job|yay|hooray|woo+hoo+)\b", re.IGNORECASE)


#: word beginnings the assistant never takes up from the user's message while decoding (insults and
#: profanity: grounding a reply on "you stupid bot" must not make it say "stupid")
NO_ECHO_PREFIXES = ("fuck", "shit", "bitch", "cunt", "asshole", "bastard", "slut", "whore", "retard", "idiot",
                    "moron", "stupid", "dumb", "damn", "crap", "piss", "dick", "prick", "twat", "wank", "bollock")


#: the words (and "oh no") that start those phrases, for decoding: to good news the sympathy words are
#: kept away from while decoding, to bad news the celebration words (see
#: :func:`empathy_nlg.generators.conditioned.tone_bias`)
SYMPATHY_WORDS = ("sorry", "sad", "terrible", "awful", "unfortunately", "condolences", "sucks", "heartbreaking",
                  "oh no")
CELEBRATION_WORDS = ("awesome", "congratulations", "congrats", "amazing", "fantastic", "wonderful", "great",
                     "exciting", "yay", "cool", "fun", "happy", "lucky")


def tone(text: str) -> Optional[str]:
    """``"sympathy"``, ``"celebration"`` or None (neither or both) by the phrase lists above."""
    s, c = bool(SYMPATHY.search(text or "")), bool(CELEBRATION.search(text or ""))
    return "sympathy" if s and not c else "celebration" if c and not s else None


#: people and animals a reply must never offer to replace: "I hope you find a new dog soon" to a dog
#: that died, "you'll find a new girlfriend" to a girlfriend who cannot come abroad yet. Only these:
#: "I hope you find a new job" after a lay-off is a fair thing to say.
IRREPLACEABLE = frozenset(stem(w) for w in """
dog dogs puppy puppies pup cat cats kitten kittens pet pets horse pony bird parrot budgie hamster rabbit bunny
guinea tortoise turtle
girlfriend boyfriend wife husband partner fiance fiancee spouse
mom mum mother mommy mummy dad father daddy son daughter baby babies child children kid kids
brother sister sibling grandma grandmother granny nan nana grandpa grandfather grandad granddad grandparent
grandparents grandson granddaughter uncle aunt auntie nephew niece cousin
""".split())
_REPLACE = re.compile(r"\b(?:a\s+new|another|a\s+different|a\s+better|new|other)\s+([a-z]+)", re.IGNORECASE)


def replaces(text: str, said: Sequence[str]) -> Optional[str]:
    """The person or animal (one of :data:`IRREPLACEABLE`) that ``text`` offers to replace ("a new
    dog", "another husband") when the user spoke of one in ``said``; None otherwise."""
    mentioned = set().union(*[content_words(t) for t in said]) if said else set()
    for match in _REPLACE.finditer(text or ""):
        word = stem(match.group(1).lower())
        if word in IRREPLACEABLE and word in mentioned:
            return match.group(1).lower()
    return None


# ---------------------------------------------------------------------------------------- emoji
#: the feeling each common emoji carries, in words. The sentence encoder (MiniLM's WordPiece
#: vocabulary) reads every emoji as [UNK], so "😭😭😭💔" was perceived as *proud*: the words are
#: appended for the encoder (see :func:`emoji_gloss`). One home for the table.
EMOJI_WORDS = {
    "😭": "crying", "😢": "crying, sad", "😿": "crying, sad", "💔": "heartbroken", "😞": "disappointed",
    "😔": "sad", "😟": "worried", "😥": "sad", "😓": "stressed", "😩": "exhausted, fed up", "😫": "exhausted",
    "😖": "upset", "😣": "struggling", "😰": "anxious", "😨": "afraid", "😱": "terrified", "😡": "furious",
    "😠": "angry", "🤬": "furious", "😤": "frustrated", "😒": "annoyed", "🙄": "annoyed", "😳": "embarrassed",
    "🤦": "embarrassed", "😬": "awkward", "🥺": "sad, pleading", "😪": "sad, sleepy", "🤢": "disgusted",
    "🤮": "disgusted", "😷": "sick", "🤒": "sick", "🤕": "hurt", "🙁": "sad", "☹": "sad", "😕": "confused",
    "😀": "happy", "😃": "happy", "😄": "happy", "😁": "happy", "😆": "laughing", "😂": "laughing, so funny",
    "🤣": "laughing, so funny", "😊": "happy", "🙂": "content", "😍": "in love", "🥰": "loving", "😘": "love",
    "❤": "love", "♥": "love", "💕": "love", "💖": "love", "💗": "love", "😎": "confident", "🥳": "celebrating",
    "🎉": "celebrating", "🎊": "celebrating", "🙌": "celebrating", "👏": "proud", "💪": "proud, strong",
    "🙏": "grateful, hopeful", "🤞": "hopeful", "😌": "relieved", "😅": "nervous", "🤗": "hugging",
    "🤩": "excited", "😮": "surprised", "😯": "surprised", "😲": "shocked", "🤯": "shocked", "😴": "tired",
    "🥱": "tired", "🤔": "unsure", "👍": "good", "👎": "bad", "🔥": "excited", "🎂": "birthday",
}
_EMOJI = re.compile("|".join(sorted(map(re.escape, EMOJI_WORDS), key=len, reverse=True)))


def emoji_gloss(text: str) -> str:
    """``text`` with the feelings of its emoji appended in words ("😭💔" → "😭💔 (crying, heartbroken)").

    Appending (never replacing) keeps every character offset of the original text valid, so
    token-level outputs (cause spans) still point into what the user wrote; a text without a known
    emoji is returned unchanged."""
    found = list(dict.fromkeys(EMOJI_WORDS[m.group(0)] for m in _EMOJI.finditer(text or "")))
    return f"{text} ({', '.join(found)})" if found else text

