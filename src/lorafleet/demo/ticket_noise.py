"""Noise that makes generated tickets read like typed ones: typos, casual spelling, lost capitals and punctuation.

Pure functions of their text and a `random.Random`, so a seed reproduces the same noise. None of them
changes what a ticket asks, so labels stay valid.
"""

from __future__ import annotations

import random
import re

# Keys next to each other on a QWERTY keyboard, for fat-finger substitutions.
_NEIGHBOURS = {
    "a": "qsz", "b": "vgn", "c": "xdv", "d": "sfe", "e": "wrd", "f": "dgr", "g": "fht", "h": "gjy", "i": "uok",
    "j": "hku", "k": "jli", "l": "kop", "m": "nk", "n": "bmh", "o": "ipl", "p": "ol", "q": "wa", "r": "etf",
    "s": "adw", "t": "ryg", "u": "yij", "v": "cbf", "w": "qes", "x": "zcs", "y": "tuh", "z": "xa",
}
_CASUAL = [
    (r"\byou\b", "u"), (r"\byour\b", "ur"), (r"\bplease\b", "pls"), (r"\bplease\b", "plz"), (r"\bthanks\b", "thx"),
    (r"\bbecause\b", "bc"), (r"\bI am\b", "im"), (r"\bI'm\b", "im"), (r"\bdon't\b", "dont"), (r"\bcan't\b", "cant"),
    (r"\bdoesn't\b", "doesnt"), (r"\bwon't\b", "wont"), (r"\bit's\b", "its"), (r"\bare\b", "r"), (r"\bwith\b", "w/"),
    (r"\bsomething\b", "smth"),
]
_WORD = re.compile(r"\b[A-Za-z]{4,}\b")


def typo(word: str, rng: random.Random) -> str:
    """`word` with one typing slip: two letters swapped, one dropped, one doubled or one fat-fingered."""
    i = rng.randrange(1, len(word) - 1)  # keep the first letter: people rarely miss it
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    near = _NEIGHBOURS.get(word[i].lower())
    return word[:i] + (rng.choice(near) if near else word[i]) + word[i + 1 :]


def add_typos(text: str, rng: random.Random, rate: float) -> str:
    """Each word of four or more letters gets a typo with probability `rate`."""
    return _WORD.sub(lambda m: typo(m.group(), rng) if rng.random() < rate else m.group(), text)


def casual(text: str, rng: random.Random, rate: float = 0.5) -> str:
    """Text-message spelling: each casual substitution that applies is made with probability `rate`."""
    for pattern, short in _CASUAL:
        if rng.random() < rate:
            text = re.sub(pattern, short, text, flags=re.IGNORECASE)
    return text


def sloppy_punctuation(text: str, rng: random.Random) -> str:
    """Drop the final full stop, or end with extra question or exclamation marks, or leave it alone."""
    choice = rng.random()
    if choice < 0.4:
        return text.rstrip(".")
    if choice < 0.5 and text.endswith("?"):
        return text + "??"
    if choice < 0.55 and text.endswith("!"):
        return text + "!!"
    return text


def spaced(text: str, rng: random.Random, rate: float = 0.05) -> str:
    """Now and then a doubled space between words, as quick typing leaves."""
    return re.sub(r" ", lambda _: "  " if rng.random() < rate else " ", text)


def apply_noise(text: str, rng: random.Random, level: float) -> str:
    """Noise scaled by `level` (0 = clean, 1 = very sloppy): typos, casual spelling, lower case, punctuation."""
    if level <= 0:
        return text
    text = add_typos(text, rng, rate=0.12 * level)
    if rng.random() < level:
        text = casual(text, rng, rate=0.6 * level)
    if rng.random() < level * 0.8:
        text = text.lower()
    if rng.random() < level:
        text = sloppy_punctuation(text, rng)
    return spaced(text, rng, rate=0.05 * level)
