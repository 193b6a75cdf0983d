"""Which images a batch operation touches: tag filters, tag search and manual selection.

All the criteria of a :class:`TagFilter` must hold together (include tags, exclude tags, search,
selection); an empty filter matches every image.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from lib_lora.captions.model import CaptionItem, parse_tag_list
from lib_lora.common.errors import UserError

LOGIC_MODES = ("and", "or")
SEARCH_MODES = ("contains", "prefix", "suffix", "exact", "regex")


def compile_regex(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """``re.compile`` whose error is a UserError naming the pattern."""
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise UserError(f"Regular expression {pattern!r} is not valid: {exc}.") from exc


def tag_matcher(query: str, mode: str = "contains", case_sensitive: bool = False) -> Callable[[str], bool]:
    """A test ``tag -> bool`` for a search box: contains / prefix / suffix / exact / regex (searched)."""
    if mode not in SEARCH_MODES:
        raise UserError(f"Search mode {mode!r} is not known; use one of {', '.join(SEARCH_MODES)}.")
    if mode == "regex":
        pattern = compile_regex(query, ignore_case=not case_sensitive)
        return lambda tag: pattern.search(tag) is not None
    needle = query if case_sensitive else query.casefold()

    def fold(tag: str) -> str:
        return tag if case_sensitive else tag.casefold()

    if mode == "prefix":
        return lambda tag: fold(tag).startswith(needle)
    if mode == "suffix":
        return lambda tag: fold(tag).endswith(needle)
    if mode == "exact":
        return lambda tag: fold(tag) == needle
    return lambda tag: needle in fold(tag)


def search_tags(tags: Iterable[str], query: str, mode: str = "contains", case_sensitive: bool = False) -> list[str]:
    """The tags of ``tags`` that match a search (for narrowing a tag list); order kept."""
    if not query:
        return list(tags)
    match = tag_matcher(query, mode, case_sensitive)
    return [tag for tag in tags if match(tag)]


@dataclass(frozen=True)
class TagFilter:
    """Which images are shown and edited.

    - ``include``: images holding all (``include_mode="and"``) or any (``"or"``) of these tags;
    - ``exclude``: images holding any (``exclude_mode="or"``) or all (``"and"``) of these are left out;
    - ``search``: images with at least one tag matching the search (see :func:`tag_matcher`);
    - ``selection``: image paths (relative, as ``CaptionItem.rel``) picked by hand; None = no restriction.
    """

    include: tuple[str, ...] = ()
    include_mode: str = "and"
    exclude: tuple[str, ...] = ()
    exclude_mode: str = "or"
    search: str = ""
    search_mode: str = "contains"
    case_sensitive: bool = False
    selection: frozenset[str] | None = None

    @classmethod
    def build(
        cls,
        include: str | Sequence[str] = (),
        include_mode: str = "and",
        exclude: str | Sequence[str] = (),
        exclude_mode: str = "or",
        search: str = "",
        search_mode: str = "contains",
        case_sensitive: bool = False,
        selection: Iterable[str] | None = None,
    ) -> TagFilter:
        """A filter from UI/CLI values: tag lists may be comma-separated strings."""
        return cls(
            include=parse_tag_list(include),
            include_mode=include_mode,
            exclude=parse_tag_list(exclude),
            exclude_mode=exclude_mode,
            search=search,
            search_mode=search_mode,
            case_sensitive=case_sensitive,
            selection=None if selection is None else frozenset(s.replace("\\", "/") for s in selection),
        )

    def is_empty(self) -> bool:
        return not self.include and not self.exclude and not self.search and self.selection is None

    def matcher(self) -> Callable[[CaptionItem], bool]:
        """A test ``item -> bool``; raises UserError for a bad mode or regex."""
        for name, mode in (("include_mode", self.include_mode), ("exclude_mode", self.exclude_mode)):
            if mode not in LOGIC_MODES:
                raise UserError(f"Filter {name} {mode!r} is not known; use 'and' or 'or'.")
        tests: list[Callable[[CaptionItem], bool]] = []
        if self.selection is not None:
            selection = self.selection
            tests.append(lambda item: item.rel in selection)
        if self.include:
            wanted = frozenset(self.include)
            if self.include_mode == "and":
                tests.append(lambda item: wanted.issubset(item.tags))
            else:
                tests.append(lambda item: not wanted.isdisjoint(item.tags))
        if self.exclude:
            unwanted = frozenset(self.exclude)
            if self.exclude_mode == "or":
                tests.append(lambda item: unwanted.isdisjoint(item.tags))
            else:
                tests.append(lambda item: not unwanted.issubset(item.tags))
        if self.search:
            match = tag_matcher(self.search, self.search_mode, self.case_sensitive)
            tests.append(lambda item: any(match(tag) for tag in item.tags))
        if not tests:
            return lambda item: True
        if len(tests) == 1:
            return tests[0]
        return lambda item: all(test(item) for test in tests)


def filter_items(items: Sequence[CaptionItem], tag_filter: TagFilter | None) -> list[int]:
    """Indices of the items ``tag_filter`` matches, in dataset order."""
    if tag_filter is None or tag_filter.is_empty():
        return list(range(len(items)))
    match = tag_filter.matcher()
    return [i for i, item in enumerate(items) if match(item)]
