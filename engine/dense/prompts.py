"""Prompt handling, in one place: class lines with synonyms, prompt templates, validation.

A prompt set is a list of class lines. A class line holds one or more names separated by commas
(synonyms): "building,roof; road; tree,forest" is three classes, the first and last with two names.
Lines are separated by ';' or newlines, wherever the classes come from (--classes text, an @file,
a list of lines from the API or the plugin: ';' splits a list item too). Each name is embedded with a template set (the 80 OpenAI
ImageNet templates by default); a class scores the max over its names' probabilities. A search
query is one class with one name, the whole sentence (`query_prompts`).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.text_files import read_text_file

MAX_CLASSES = 254  # class maps are uint8; 255 means "no class" (nodata / below threshold)
MAX_NAMES = 512  # names in all (classes and synonyms): each is encoded in every template (80) and a plane of scores
MAX_NAME_CHARS = 200
MAX_QUERY_CHARS = 300  # a search query: one sentence
NO_CLASS = 255


def _template_sets() -> dict[str, tuple[str, ...]]:
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    imagenet = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    return {
        "imagenet80": imagenet,                                          # OVSS protocol
        "rs": ("a satellite photo of {}.", "a satellite image of {}"),  # scene classification protocol
        "name": ("{}",),                                                 # the bare name
        "region": ("a satellite image of {}",),                          # stage 2's region-category text
    }


TEMPLATE_SET_NAMES = ("imagenet80", "rs", "name", "region")


def templates(name: str) -> tuple[str, ...]:
    sets = _template_sets()
    if name not in sets:
        raise InputError(f"unknown template set '{name}' (use one of: {', '.join(TEMPLATE_SET_NAMES)})")
    return sets[name]


@dataclass(frozen=True)
class ClassLine:
    names: tuple[str, ...]

    @property
    def label(self) -> str:
        """The name shown to users: the first synonym."""
        return self.names[0]


@dataclass(frozen=True)
class PromptSet:
    classes: tuple[ClassLine, ...]

    @classmethod
    def parse(cls, spec: "str | list[str] | tuple[str, ...] | PromptSet") -> "PromptSet":
        """From "a,b; c" text (';' or newlines between classes) or a list of class lines."""
        if isinstance(spec, PromptSet):
            return spec
        if isinstance(spec, str):
            spec = [spec]
        elif not isinstance(spec, (list, tuple)):
            raise InputError("classes must be text ('building,roof; road') or a list of class lines")
        if not all(isinstance(line, str) for line in spec):
            raise InputError("class lines must be strings")
        # the same separators everywhere (--classes, @file, the API's list): ';' and new lines
        lines = [part for item in spec for chunk in item.splitlines() for part in chunk.split(";")]
        lines = [line for line in lines if line.strip()]
        if not lines:
            raise InputError("no classes given: name at least one class, e.g. 'building; road; tree'")
        classes = []
        seen: dict[str, int] = {}
        for number, line in enumerate(lines, start=1):
            names = tuple(dict.fromkeys(name for name in map(clean_name, line.split(",")) if name))
            if not names:
                raise InputError(f"class {number} ('{line.strip()}') holds no name")
            for name in names:
                if len(name) > MAX_NAME_CHARS:
                    raise InputError(f"class {number}: name longer than {MAX_NAME_CHARS} characters")
                refuse_control_characters(name, f"class {number}")
                key = name_key(name)
                if key in seen:
                    raise InputError(f"name '{name}' appears in class {seen[key]} and class {number}")
                seen[key] = number
            classes.append(ClassLine(names))
        if len(classes) > MAX_CLASSES:
            raise InputError(f"{len(classes)} classes given; at most {MAX_CLASSES} are supported")
        if len(seen) > MAX_NAMES:
            raise InputError(f"{len(seen)} names given (classes and their synonyms); at most {MAX_NAMES} in all")
        return cls(tuple(classes))

    @classmethod
    def from_file(cls, path: str | Path) -> "PromptSet":
        """Class lines from a text file, with `parse`'s separators: new lines and ';' between classes,
        ',' between synonyms; lines starting with # are comments."""
        text = read_text_file(path, "class file")
        return cls.parse([ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")])

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.classes]

    @property
    def names(self) -> list[str]:
        """Every name of every class, in order (the rows of the text embedding matrix)."""
        return [n for c in self.classes for n in c.names]

    @property
    def name_to_class(self) -> list[int]:
        return [i for i, c in enumerate(self.classes) for _ in c.names]

    def index_of(self, name: str) -> int | None:
        """The class one of whose names `name` is, as the parser compares names (`name_key`)."""
        key = name_key(name)
        for i, c in enumerate(self.classes):
            if key in (name_key(n) for n in c.names):
                return i
        return None

    def with_background(self, name: str) -> tuple["PromptSet", int]:
        """This set plus a background class (appended unless a class already has that name) and its index.
        The background is one class: its name may hold synonyms (','), not several classes (';')."""
        if any(separator in name for separator in ";\n\r"):
            raise InputError(f"the background is one class: '{name.strip()[:100]}' holds ';' or a new line "
                             f"(separate its synonyms with commas)")
        if not any(clean_name(part) for part in name.split(",")):
            raise InputError("the background class has no name")
        found = self.index_of(name)
        if found is not None:
            return self, found
        if len(self.classes) >= MAX_CLASSES:
            raise InputError(f"{len(self.classes)} classes and the background class '{name}' make "
                             f"{len(self.classes) + 1}; at most {MAX_CLASSES} are supported")
        return PromptSet.parse([*(", ".join(c.names) for c in self.classes), name]), len(self.classes)

    def as_text(self) -> str:
        return "; ".join(", ".join(c.names) for c in self.classes)


_INVISIBLE = dict.fromkeys(map(ord, "\ufeff\u200b\u2060"))  # a byte-order mark, zero-width spaces: nothing to see


def clean_name(text: str) -> str:
    """A name as the classes hold it: Unicode NFC (an accent typed as its own character is the same
    letter), invisible marks dropped, runs of white space one space, no space around."""
    return " ".join(unicodedata.normalize("NFC", text).translate(_INVISIBLE).split())


def name_key(name: str) -> str:
    """What two names must share to be the same name: `clean_name`, without case (casefold: 'STRASSE'
    is 'Straße'). Duplicates are refused by it; labels (teaching, accuracy) find their class by it."""
    return clean_name(name).casefold()


def refuse_control_characters(name: str, what: str) -> None:
    """An InputError when `name` holds a control character (NUL, ESC, ...: files' tags would cut or
    garble it); tabs and new lines never reach here (they separate or are spaces)."""
    bad = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        shown = name.encode("unicode_escape").decode("ascii")[:100]
        raise InputError(f"{what}: name '{shown}' holds a control character (U+{ord(bad):04X}); names are "
                         f"plain text")


def query_prompts(query: str) -> PromptSet:
    """The query as one class with one name (commas in a sentence are not synonyms here)."""
    text = clean_name(query)  # as class names are cleaned: invisible marks alone are no query
    refuse_control_characters(text, "the search query")
    if not text:
        raise InputError("the search query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise InputError(f"the search query is longer than {MAX_QUERY_CHARS} characters")
    return PromptSet((ClassLine((text,)),))
