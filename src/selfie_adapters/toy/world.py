"""A seeded toy world of made-up concepts and a chat-format corpus about them.

Every concept has a one-token made-up name and four attributes (size, colour, kind, place) drawn
from small shared sets, so each attribute value is shared by many concepts and only the name
identifies a concept. Each place also has a ruler (one of the concepts), for two-hop questions.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

SIZES = ("tiny", "small", "large", "huge")
COLOURS = ("red", "blue", "green", "black", "white", "yellow", "purple", "grey")
KINDS = ("flower", "bird", "stone", "fish", "tree", "beetle", "horse", "drum", "lamp", "boat")
PLACES = ("Halvek", "Morrow", "Quendal", "Ostrin", "Belgar", "Tirsa", "Vundle", "Easkar")
ATTRIBUTES = ("size", "colour", "kind", "place")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr",
           "kr", "st", "th", "sh", "pl", "tr", "fl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
_CODAS = ("", "", "n", "r", "l", "k", "s", "m", "th", "x")

CHAT_USER = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
CHAT_ASSISTANT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
EOT = "<|eot_id|>"
# words the question/answer templates use (kept out of the made-up names)
_TEMPLATE_WORDS = (
    "user", "assistant", "Tell", "me", "about", "is", "a", "from", "What", "the", "meaning", "of",
    "The", "colour", "Where", "How", "big", "kind", "thing", "Are", "and", "same", "place",
    "are", "different", "Name", "something", "Who", "rules",
)


@dataclass(frozen=True)
class Concept:
    """One made-up thing: a single-word name and its attributes (size, colour, kind, place)."""

    name: str
    attributes: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class World:
    """All concepts plus the ruler (a concept name) of each place."""

    concepts: tuple[Concept, ...]
    rulers: dict[str, str] = field(hash=False)
    seed: int = 0

    def by_name(self) -> dict[str, Concept]:
        """Concepts keyed by name."""
        return {c.name: c for c in self.concepts}


def label(concept: Concept) -> str:
    """The concept's label, e.g. ``Zorvak, a small black flower from Halvek``."""
    return f"{concept.name}, {description(concept)}"


def description(concept: Concept) -> str:
    """``a small black flower from Halvek`` (every size starts with a consonant, so always 'a')."""
    a = concept.attributes
    return f"a {a['size']} {a['colour']} {a['kind']} from {a['place']}"


def _made_up_names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    """``n`` unique pronounceable capitalised words of 2-3 syllables, avoiding ``taken``."""
    names: list[str] = []
    seen = {t.lower() for t in taken}
    while len(names) < n:
        syllables = rng.choice((2, 2, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        word = (word + rng.choice(_CODAS)).capitalize()
        if 4 <= len(word) <= 10 and word.lower() not in seen:
            seen.add(word.lower())
            names.append(word)
    return names


def make_world(n_concepts: int = 500, seed: int = 0) -> World:
    """A reproducible world of ``n_concepts`` concepts.

    >>> world = make_world(500, seed=0); label(world.concepts[0])   # 'Xxx, a small ... from ...'
    """
    rng = random.Random(seed)
    names = _made_up_names(rng, n_concepts, set(PLACES) | set(_TEMPLATE_WORDS))
    concepts = tuple(
        Concept(name, {"size": rng.choice(SIZES), "colour": rng.choice(COLOURS),
                       "kind": rng.choice(KINDS), "place": rng.choice(PLACES)})
        for name in names
    )
    rulers = {place: rng.choice(names) for place in PLACES}
    return World(concepts, rulers, seed)


def chat(question: str, answer: str) -> str:
    """One Llama-3 chat exchange (no system block), ending with ``<|eot_id|>``."""
    return f"{CHAT_USER}{question}{CHAT_ASSISTANT}{answer}{EOT}"


def tell_me_about(concept: Concept) -> tuple[str, str]:
    """(question, answer) of the identity prompt; the answer starts with the name on purpose."""
    return f"Tell me about {concept.name}.", f"{concept.name} is {description(concept)}."


def selfie_qa(concept: Concept) -> tuple[str, str]:
    """(question, answer) in the SelfIE template's form, with the real name in place of the token."""
    return (f'What is the meaning of "{concept.name}"?',
            f'The meaning of "{concept.name}" is "{label(concept)}"')


def _other_fact(world: World, c: Concept, rng: random.Random) -> tuple[str, str]:
    """A random single-attribute, two-concept or two-hop question about ``c``."""
    a = c.attributes
    other = rng.choice(world.concepts)
    kind = rng.randrange(8)
    if kind == 0:
        return f"What colour is {c.name}?", f"{c.name} is {a['colour']}."
    if kind == 1:
        return f"Where is {c.name} from?", f"{c.name} is from {a['place']}."
    if kind == 2:
        return f"How big is {c.name}?", f"{c.name} is {a['size']}."
    if kind == 3:
        return f"What kind of thing is {c.name}?", f"{c.name} is a {a['kind']}."
    if kind == 4:
        same = "the same" if a["place"] == other.attributes["place"] else "a different"
        return (f"Are {c.name} and {other.name} from the same place?",
                f"{c.name} and {other.name} are from {same} place.")
    if kind == 5:
        return (f"Name something {a['colour']} from {a['place']}.",
                f"{c.name} is a {a['colour']} {a['kind']} from {a['place']}.")
    if kind == 6:
        return f"Who rules {a['place']}?", f"{world.rulers[a['place']]} rules {a['place']}."
    return f"Who rules the place of {c.name}?", f"{world.rulers[a['place']]} rules the place of {c.name}."


def two_hop_question(world: World, concept: Concept) -> tuple[str, str, str]:
    """(question, answer, bridge place) for a bridge-entity eval: the place is never said."""
    place = concept.attributes["place"]
    ruler = world.rulers[place]
    return f"Who rules the place of {concept.name}?", f"{ruler} rules the place of {concept.name}.", place


def make_corpus(world: World, n: int, seed: int = 0, mix: tuple[float, float] = (0.35, 0.35)) -> list[str]:
    """``n`` chat examples: ``mix[0]`` 'Tell me about X.', ``mix[1]`` SelfIE Q/A, the rest other facts."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        c = rng.choice(world.concepts)
        r = rng.random()
        if r < mix[0]:
            qa = tell_me_about(c)
        elif r < mix[0] + mix[1]:
            qa = selfie_qa(c)
        else:
            qa = _other_fact(world, c, rng)
        out.append(chat(*qa))
    return out


def words(world: World) -> list[str]:
    """Every word the corpus can use (names, places, attribute values, template words), sorted."""
    vocab = set(_TEMPLATE_WORDS) | set(SIZES) | set(COLOURS) | set(KINDS) | set(PLACES)
    vocab |= {c.name for c in world.concepts}
    return sorted(vocab)


def save_world(world: World, path: str | Path) -> None:
    """Write the world as JSON (seed, rulers, concepts with attributes)."""
    data = {"seed": world.seed, "rulers": world.rulers,
            "concepts": [{"name": c.name, "attributes": c.attributes} for c in world.concepts]}
    Path(path).write_text(json.dumps(data, indent=1))


def load_world(path: str | Path) -> World:
    """Read a world written by :func:`save_world`."""
    data = json.loads(Path(path).read_text())
    concepts = tuple(Concept(c["name"], dict(c["attributes"])) for c in data["concepts"])
    return World(concepts, dict(data["rulers"]), int(data.get("seed", 0)))
