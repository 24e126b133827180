"""Procedural scenes for the toy world: the scene model, sampling, drawing and the texts about them.

A scene is one or two coloured shapes at named positions on a plain background. Every text the toy
world writes about a scene (captions, questions, passages, titles) names every attribute that tells
two scenes apart, so a scene key that is unique in the world makes every text unambiguous. Images are
64x64 RGB JPEGs with large objects and well-separated colours, because a tiny CLIP sees them at 32x32.

Everything takes an explicit ``random.Random``; nothing here touches the global RNG.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
_SS = 4  # supersampling factor: draw at 256 px and box-filter down, for clean edges at 64 px

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 180, 50), "blue": (40, 90, 250), "yellow": (250, 225, 30),
    "purple": (150, 50, 200), "orange": (250, 130, 0), "white": (245, 245, 245),
}
# Backgrounds are dark or mid-tone so that every object colour stands out against every one.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0), "gray": (120, 120, 120), "brown": (100, 60, 25), "navy": (15, 25, 80),
}
SIZES = {"small": 10, "large": 15}  # radius in pixels at 64 px
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (16, 16), "top": (32, 16), "top right": (48, 16),
    "left": (16, 32), "center": (32, 32), "right": (48, 32),
    "bottom left": (16, 48), "bottom": (32, 48), "bottom right": (48, 48),
}
# Two-object scenes use opposite positions only: two large objects then never overlap.
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top",
            "top left": "bottom right", "bottom right": "top left",
            "top right": "bottom left", "bottom left": "top right"}
P_SINGLE = 0.25  # share of one-object scenes (their space is small: 3,024 keys)

# Paraphrase vocabulary: a text names an attribute with any of its synonyms.
SHAPE_WORDS = {"circle": ["circle", "disc"], "square": ["square", "block"], "triangle": ["triangle"],
               "cross": ["cross", "plus sign"], "diamond": ["diamond", "rhombus"], "star": ["star"]}
COLOUR_WORDS = {c: [c] for c in COLOURS} | {"purple": ["purple", "violet"]}
BG_WORDS = {"black": ["black"], "gray": ["gray", "grey"], "brown": ["brown"], "navy": ["navy", "navy blue"]}
SIZE_WORDS = {"small": ["small", "little"], "large": ["large", "big"]}
POS_WORDS = {
    "left": ["on the left", "at the left side"], "right": ["on the right", "at the right side"],
    "top": ["at the top", "near the top edge"], "bottom": ["at the bottom", "near the bottom edge"],
    "center": ["in the center", "in the middle"],
    "top left": ["in the top left corner", "at the upper left"],
    "top right": ["in the top right corner", "at the upper right"],
    "bottom left": ["in the bottom left corner", "at the lower left"],
    "bottom right": ["in the bottom right corner", "at the lower right"],
}
MOVE_WORDS = {p: ["to the " + p.replace("center", "middle") + (" corner" if " " in p else "")] for p in POSITIONS}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    pos: str


@dataclass(frozen=True)
class Scene:
    """Objects in canonical order (by position), so equal scenes compare and hash equal."""

    objects: tuple[Obj, ...]
    background: str

    @staticmethod
    def make(objects: list[Obj] | tuple[Obj, ...], background: str) -> Scene:
        order = list(POSITIONS)
        return Scene(tuple(sorted(objects, key=lambda o: order.index(o.pos))), background)

    @property
    def key(self) -> str:
        """A compact, unique, human-readable id, e.g. ``navy|large red circle@left|small blue star@right``."""
        return "|".join([self.background] + [f"{o.size} {o.colour} {o.shape}@{o.pos}" for o in self.objects])


def _random_obj(rng: random.Random, pos: str) -> Obj:
    return Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)), pos)


def sample_scene(rng: random.Random) -> Scene:
    """Draw a scene: a background and one object anywhere, or two objects at opposite positions."""
    bg = rng.choice(list(BACKGROUNDS))
    if rng.random() < P_SINGLE:
        return Scene.make([_random_obj(rng, rng.choice(list(POSITIONS)))], bg)
    a = rng.choice(list(OPPOSITE))
    return Scene.make([_random_obj(rng, a), _random_obj(rng, OPPOSITE[a])], bg)


class SceneBook:
    """Hands out scenes whose keys were never handed out before (disjoint datasets and splits)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def reserve(self, scene: Scene) -> bool:
        if scene.key in self.used:
            return False
        self.used.add(scene.key)
        return True

    def fresh(self, rng: random.Random) -> Scene:
        for _ in range(10_000):
            scene = sample_scene(rng)
            if self.reserve(scene):
                return scene
        raise RuntimeError("scene space exhausted; ask for fewer scenes")


# ---------------------------------------------------------------- drawing

def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.82
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        w = r * 0.36
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5))
                for k in range(10)]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, jitter: random.Random | None = None) -> bytes:
    """Draw ``scene`` as 64x64 RGB JPEG bytes. With ``jitter``, re-render it slightly differently (a
    global shift of up to 3 px, each radius -2..+1 px, background shade +-20) without changing any
    attribute a text names: the toysim query is such a re-render of its candidate."""
    bg = BACKGROUNDS[scene.background]
    dx = dy = 0
    radius_delta = [0] * len(scene.objects)
    if jitter is not None:
        dx, dy = jitter.randint(-3, 3), jitter.randint(-3, 3)
        radius_delta = [jitter.randint(-2, 1) for _ in scene.objects]
        shade = jitter.randint(-20, 20)
        bg = tuple(min(255, max(0, c + shade)) for c in bg)
    big = IMAGE_SIZE * _SS
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for obj, dr in zip(scene.objects, radius_delta):
        x, y = POSITIONS[obj.pos]
        cx, cy, r = (x + dx) * _SS, (y + dy) * _SS, (SIZES[obj.size] + dr) * _SS
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[obj.colour])
        else:
            draw.polygon(_shape_polygon(obj.shape, cx, cy, r), fill=COLOURS[obj.colour])
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    buf = io.BytesIO()
    # 4:4:4 chroma keeps the colours of small objects exact after decoding.
    img.save(buf, format="JPEG", quality=92, subsampling=0)
    return buf.getvalue()


# ---------------------------------------------------------------- texts

def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def obj_phrase(o: Obj, rng: random.Random, with_size: bool = True) -> str:
    """``big red circle``: size (optional), colour and shape, each by a random synonym."""
    words = [rng.choice(SIZE_WORDS[o.size])] if with_size else []
    return " ".join(words + [rng.choice(COLOUR_WORDS[o.colour]), rng.choice(SHAPE_WORDS[o.shape])])


def _desc(scene: Scene, rng: random.Random) -> str:
    """Every object with its position, objects in random order: ``a big red circle on the left and ...``."""
    parts = [f"{_a(obj_phrase(o, rng))} {rng.choice(POS_WORDS[o.pos])}" for o in scene.objects]
    rng.shuffle(parts)
    return parts[0] if len(parts) == 1 else rng.choice([" and ", " next to ", " with "]).join(parts)


CAPTION_TEMPLATES = (
    "{desc} on a {bg} background",
    "{desc}, {bg} background",
    "there is {desc} against a {bg} backdrop",
    "a drawing of {desc} over {bg}",
    "a {bg} background with {desc}",
    "a picture showing {desc}; the background is {bg}",
    "on a {bg} canvas: {desc}",
)
QUESTION_TEMPLATES = (
    "which scene has {desc} on a {bg} background?",
    "what drawing shows {desc} against {bg}?",
    "where can I see {desc} over a {bg} backdrop?",
    "is there a picture with {desc} and a {bg} background?",
    "which {bg} scene contains {desc}?",
)


def caption(scene: Scene, rng: random.Random, avoid: set[int] | None = None) -> tuple[str, int]:
    """A caption from a template not in ``avoid``; returns (text, template index), so that callers can
    make query and candidate captions of one scene come from different templates (paraphrases)."""
    choices = [i for i in range(len(CAPTION_TEMPLATES)) if not avoid or i not in avoid]
    t = rng.choice(choices)
    return CAPTION_TEMPLATES[t].format(desc=_desc(scene, rng), bg=rng.choice(BG_WORDS[scene.background])), t


def question(scene: Scene, rng: random.Random) -> str:
    """A question whose answer is this scene (toyqa queries)."""
    t = rng.choice(QUESTION_TEMPLATES)
    return t.format(desc=_desc(scene, rng), bg=rng.choice(BG_WORDS[scene.background]))


def passage(scene: Scene, rng: random.Random) -> str:
    """A several-sentence description of the scene (toyqa text candidates)."""
    bg = rng.choice(BG_WORDS[scene.background])
    sents = [rng.choice([f"this drawing has a {bg} background.", f"the picture is painted on {bg}.",
                         f"the backdrop of this scene is {bg}."])]
    objs = list(scene.objects)
    rng.shuffle(objs)
    for o in objs:
        p, pos = obj_phrase(o, rng), rng.choice(POS_WORDS[o.pos])
        s = rng.choice([f"{_a(p)} sits {pos}.", f"{pos}, there is {_a(p)}.", f"{_a(p)} is drawn {pos}."])
        sents.append(s[0].upper() + s[1:])
    sents.append("It shows one shape in total." if len(objs) == 1 else
                 rng.choice(["It shows two shapes in total.", "There are two shapes."]))
    return " ".join(sents)


def title(scene: Scene, rng: random.Random) -> str:
    """A short title without positions or sizes; the image beside it carries those (toyqa (i,t))."""
    names = [obj_phrase(o, rng, with_size=False) for o in scene.objects]
    return " and ".join(names) + " on " + rng.choice(BG_WORDS[scene.background])


# ---------------------------------------------------------------- edits (toyedit)

def _refer(scene: Scene, i: int) -> str:
    """The shortest unambiguous way to point at object ``i`` of ``scene``."""
    o, others = scene.objects[i], [x for j, x in enumerate(scene.objects) if j != i]
    if all(x.shape != o.shape for x in others):
        return f"the {o.shape}"
    if all(x.colour != o.colour for x in others):
        return f"the {o.colour} {o.shape}"
    return f"the {o.shape} {POS_WORDS[o.pos][0]}"


def _edit_kinds(target: Scene) -> list[str]:
    kinds = ["recolour", "reshape", "resize", "background"]
    if len(target.objects) == 1:
        kinds.append("move")
        if target.objects[0].pos != "center":
            kinds.append("remove")
    else:
        a, b = target.objects
        if (a.shape, a.colour, a.size) != (b.shape, b.colour, b.size):
            kinds.append("swap")
        kinds.append("add")
    return kinds


def _reference_for(target: Scene, kind: str, rng: random.Random) -> tuple[Scene, str]:
    """Build the reference scene that ``kind`` turns into ``target``, and the modification text."""
    objs, bg = list(target.objects), target.background
    i = rng.randrange(len(objs))
    t = objs[i]
    if kind == "recolour":
        objs[i] = replace(t, colour=rng.choice([c for c in COLOURS if c != t.colour]))
        ref = Scene.make(objs, bg)
        r = _refer(ref, ref.objects.index(objs[i]))
        opts = [f"the same scene, but {r} is {t.colour}", f"make {r} {t.colour}",
                f"change the colour of {r} to {t.colour}", f"paint {r} {t.colour} instead"]
    elif kind == "reshape":
        objs[i] = replace(t, shape=rng.choice([s for s in SHAPES if s != t.shape]))
        ref = Scene.make(objs, bg)
        r = _refer(ref, ref.objects.index(objs[i]))
        opts = [f"replace {r} with {_a(t.shape)}", f"turn {r} into {_a(t.shape)}",
                f"the same scene, but {r} becomes {_a(t.shape)}"]
    elif kind == "resize":
        objs[i] = replace(t, size="small" if t.size == "large" else "large")
        ref = Scene.make(objs, bg)
        r = _refer(ref, ref.objects.index(objs[i]))
        opts = ([f"make {r} bigger", f"enlarge {r}", f"the same scene, but {r} is larger"]
                if t.size == "large" else
                [f"make {r} smaller", f"shrink {r}", f"the same scene, but {r} is smaller"])
    elif kind == "background":
        new_bg = rng.choice([b for b in BACKGROUNDS if b != bg])
        ref = Scene.make(objs, new_bg)
        opts = [f"change the background to {bg}", f"the same scene on a {bg} background",
                f"make the background {bg}", f"use a {bg} backdrop instead"]
    elif kind == "move":
        ref = Scene.make([replace(t, pos=rng.choice([p for p in POSITIONS if p != t.pos]))], bg)
        r, to = _refer(ref, 0), rng.choice(MOVE_WORDS[t.pos])
        opts = [f"move {r} {to}", f"shift {r} {to}", f"the same scene, but {r} is {POS_WORDS[t.pos][0]}"]
    elif kind == "swap":
        ref = Scene.make([replace(objs[0], pos=objs[1].pos), replace(objs[1], pos=objs[0].pos)], bg)
        r1, r2 = _refer(ref, 0), _refer(ref, 1)
        opts = [f"swap {r1} and {r2}", f"exchange the positions of {r1} and {r2}",
                f"let {r1} and {r2} trade places"]
    elif kind == "add":
        ref = Scene.make([o for j, o in enumerate(objs) if j != i], bg)
        p, pos = obj_phrase(t, rng), rng.choice(POS_WORDS[t.pos])
        opts = [f"add {_a(p)} {pos}", f"also draw {_a(p)} {pos}", f"the same scene with an extra {p} {pos}"]
    elif kind == "remove":
        ref = Scene.make([t, _random_obj(rng, OPPOSITE[t.pos])], bg)
        r = _refer(ref, ref.objects.index(next(o for o in ref.objects if o.pos != t.pos)))
        opts = [f"remove {r}", f"delete {r}", f"the same scene without {r}", f"take away {r}"]
    else:
        raise ValueError(f"unknown edit kind {kind!r}")
    return ref, rng.choice(opts)


def make_edit(target: Scene, rng: random.Random, book: SceneBook) -> tuple[Scene, str, str]:
    """A composed-retrieval query for ``target``: (reference scene, modification text, edit kind).
    The reference is reserved in ``book`` so that no candidate anywhere looks like a query image."""
    for _ in range(100):
        kind = rng.choice(_edit_kinds(target))
        ref, text = _reference_for(target, kind, rng)
        if book.reserve(ref):
            return ref, text, kind
    raise RuntimeError(f"no free reference scene for {target.key}")
