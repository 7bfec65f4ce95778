"""The single home of every label set the engine uses.

Nothing else in the project may spell out these lists: import them from here.

* The 32 EmpatheticDialogues emotions (Rashkin et al. 2019), in alphabetical order; the index of
  an emotion in :data:`EMOTIONS` is its class id everywhere (heads, metrics, confusion matrices).
* MIME's polarity grouping (Majumder et al. 2020): 13 positive, 19 negative.
* The communication mechanisms (CM) of EPITOME (Sharma et al. 2020) as IMAGINE uses them.
* ATOMIC-2020 relations and IMAGINE's four knowledge groups; NEC's entity and social relations.
* RECCON's (DailyDialog) emotion labels, which are *not* ED's.
"""

from __future__ import annotations

from typing import Dict, Tuple

EMOTIONS: Tuple[str, ...] = (
    "afraid", "angry", "annoyed", "anticipating", "anxious", "apprehensive", "ashamed",
    "caring", "confident", "content", "devastated", "disappointed", "disgusted",
    "embarrassed", "excited", "faithful", "furious", "grateful", "guilty", "hopeful",
    "impressed", "jealous", "joyful", "lonely", "nostalgic", "prepared", "proud", "sad",
    "sentimental", "surprised", "terrified", "trusting",
)
EMOTION_TO_ID: Dict[str, int] = {e: i for i, e in enumerate(EMOTIONS)}

POSITIVE_EMOTIONS: Tuple[str, ...] = (
    "confident", "joyful", "grateful", "impressed", "proud", "excited", "trusting",
    "hopeful", "faithful", "prepared", "content", "surprised", "caring",
)
NEGATIVE_EMOTIONS: Tuple[str, ...] = tuple(e for e in EMOTIONS if e not in POSITIVE_EMOTIONS)
POLARITIES: Tuple[str, ...] = ("positive", "negative")


def polarity_of(emotion: str) -> str:
    """MIME's group of an ED emotion: ``"positive"`` or ``"negative"``."""
    emotion = normalise_emotion(emotion)
    return "positive" if emotion in POSITIVE_EMOTIONS else "negative"


def normalise_emotion(label: str) -> str:
    """Map a label as it appears in files (any case, stray spaces) to its canonical form.

    Raises ``ValueError`` naming the label when it is not one of the 32 ED emotions.
    """
    key = str(label).strip().lower()
    if key not in EMOTION_TO_ID:
        raise ValueError(f"unknown emotion label {label!r}; expected one of the 32 ED emotions")
    return key


# Communication mechanisms (EPITOME): short code -> file stem and human name.
CM_CODES: Tuple[str, ...] = ("ER", "IP", "EX")
CM_NAMES: Dict[str, str] = {
    "ER": "emotional reaction",
    "IP": "interpretation",
    "EX": "exploration",
}
CM_FILE_STEMS: Dict[str, str] = {
    "ER": "emotional-reactions",
    "IP": "interpretations",
    "EX": "explorations",
}


def cm_from_filename(name: str) -> str:
    """The CM code an EPITOME file is about, read from its file name (as the original repo names them)."""
    lowered = name.lower()
    for code, stem in CM_FILE_STEMS.items():
        if stem in lowered or stem.replace("-", "_") in lowered:
            return code
    raise ValueError(
        f"cannot tell the mechanism of {name!r}: the file name must contain one of "
        + ", ".join(CM_FILE_STEMS.values())
    )


# ATOMIC-2020 relations used by the seeds.
IMAGINE_KNOWLEDGE_GROUPS: Dict[str, Tuple[str, ...]] = {
    "affect": ("xReact",),
    "behaviour": ("xIntent", "xNeed", "xWant", "xEffect", "xAttr"),
    "physical": ("HasProperty", "CapableOf", "Desires"),
    "events": ("Causes", "xReason"),
}
IMAGINE_RELATIONS: Tuple[str, ...] = tuple(
    r for group in IMAGINE_KNOWLEDGE_GROUPS.values() for r in group
)
NEC_ENTITY_RELATIONS: Tuple[str, ...] = ("ObjectUse", "AtLocation", "MadeUpOf", "HasProperty")
NEC_SOCIAL_RELATIONS: Tuple[str, ...] = ("xEffect", "xReact", "xIntent", "xNeed", "xWant")

# RECCON / DailyDialog emotions (not ED's 32).
RECCON_EMOTIONS: Tuple[str, ...] = (
    "happiness", "sadness", "anger", "fear", "disgust", "surprise", "neutral",
)
