"""Fixed, locale-aware resource messages from a versioned catalogue.

The catalogue (``data/resources.json``) lists, per region, the emergency number and crisis
services with the URL each entry was checked against, plus message templates per language.
Redirect replies are always built from it, never generated. Unknown regions get the
international fallback, which always says to contact local emergency services.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources as importlib_resources
from typing import Any

from .errors import InvalidArgument
from .types import Category, Resource

__all__ = [
    "FALLBACK_REGION",
    "MAX_LOCALE_CHARS",
    "Locale",
    "ResourceCatalogue",
    "parse_locale",
    "validate_locale",
]

FALLBACK_REGION = "INTL"
MAX_LOCALE_CHARS = 35
"""The longest locale a new session takes (RFC 5646 asks implementations to handle 35)."""
_LOCALE_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_LOCALE = re.compile(
    r"(?P<lang>[A-Za-z]{2,3})(?:[-_](?P<script>[A-Za-z]{4}))?(?:[-_](?P<region>[A-Za-z]{2}|\d{3}))?(?:[-_][A-Za-z0-9]{1,8})*"
)


@dataclass(frozen=True)
class Locale:
    """A parsed BCP-47 tag: language (lower case) and region (upper case, or ``None``)."""

    language: str
    region: str | None


def parse_locale(tag: str) -> Locale:
    """Parse ``"en-GB"``, ``"fr_CA"``, ``"de"``...

    Raises:
        InvalidArgument: ``tag`` is not a language tag.
    """
    m = _LOCALE.fullmatch(tag.strip()) if isinstance(tag, str) else None
    if m is None:
        raise InvalidArgument("locale must be a language tag such as 'en-GB'")
    region = m.group("region")
    return Locale(m.group("lang").lower(), region.upper() if region else None)


def validate_locale(tag: str) -> Locale:
    """Check the locale of a new session, then parse it (:func:`parse_locale`).

    Stricter than :func:`parse_locale`, which also reads locales stored before this check:
    at most :data:`MAX_LOCALE_CHARS` characters, all ASCII letters, digits, ``-`` or ``_``
    (so no spaces, control characters or non-ASCII digits such as ``"٣"``).

    Raises:
        InvalidArgument: ``tag`` is too long, has another character, or is not a language tag.
    """
    if not isinstance(tag, str) or not (
        len(tag) <= MAX_LOCALE_CHARS and tag.isascii() and _LOCALE_CHARS.fullmatch(tag)
    ):
        raise InvalidArgument(
            f"locale must be a language tag such as 'en-GB': at most {MAX_LOCALE_CHARS}"
            " ASCII letters, digits, '-' or '_'"
        )
    return parse_locale(tag)


class ResourceCatalogue:
    """Builds redirect messages from the catalogue.

    Args:
        data: The parsed catalogue; :meth:`load` reads the one shipped in the package.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.version = str(data["version"])
        self._regions: Mapping[str, Any] = data["regions"]
        self._templates: Mapping[str, Mapping[str, str]] = data["templates"]
        if FALLBACK_REGION not in self._regions or "en" not in self._templates:
            raise ValueError("the catalogue needs an INTL region and English templates")
        if any("check_in" not in t for t in self._templates.values()):
            raise ValueError("every template language needs a 'check_in' message")

    @classmethod
    def load(cls) -> ResourceCatalogue:
        """The catalogue shipped in ``companion/data/resources.json``."""
        raw = (
            importlib_resources.files("companion")
            .joinpath("data/resources.json")
            .read_text("utf-8")
        )
        return cls(json.loads(raw))

    @property
    def regions(self) -> tuple[str, ...]:
        """Region codes with their own entries (plus ``INTL``)."""
        return tuple(self._regions)

    def region_for(self, locale: str) -> str:
        """The catalogue region used for ``locale`` (``INTL`` when unknown)."""
        region = parse_locale(locale).region
        return region if region is not None and region in self._regions else FALLBACK_REGION

    def resources(self, category: Category, locale: str) -> tuple[Resource, ...]:
        """The services listed for ``category`` in ``locale``'s region, in its language."""
        region = self._regions[self.region_for(locale)]
        key = "medical" if category is Category.MEDICAL else "crisis"
        lang = parse_locale(locale).language
        return tuple(_resource(entry, lang) for entry in region.get(key, ()))

    def message(
        self, category: Category, locale: str, *, failed: bool = False
    ) -> tuple[str, tuple[Resource, ...]]:
        """The fixed reply for ``category`` in ``locale`` and the services it lists.

        Args:
            category: ``CRISIS`` or ``MEDICAL``.
            locale: The session's language tag.
            failed: The safety check itself failed: use the fallback wording, crisis services.
        """
        if category is Category.NONE and not failed:
            raise ValueError("no resource message for category 'none'")
        loc = parse_locale(locale)
        region = self._regions[self.region_for(locale)]
        templates: Mapping[str, Any] = self._templates.get(loc.language, self._templates["en"])
        if failed:
            key, listed = "fallback", self.resources(Category.CRISIS, locale)
        elif category is Category.MEDICAL:
            listed = self.resources(Category.MEDICAL, locale)
            key = "medical_with_resources" if listed else "medical"
        else:
            key, listed = "crisis", self.resources(Category.CRISIS, locale)
        emergency = region["emergency"].get("number") or templates["emergency_unknown"]
        labels: Mapping[str, str] = templates.get("labels", {})
        # str.replace, not str.format: the catalogue's own text may hold braces one day.
        text = (
            templates[key]
            .replace("{resources}", "\n".join(_format(r, labels) for r in listed))
            .replace("{emergency}", emergency)
        )
        return text.strip(), listed

    def check_in(self, locale: str) -> tuple[str, tuple[Resource, ...]]:
        """The fixed check-in question for ``locale`` and the one 24/7 service it names.

        Asked on possible risk: it asks directly whether the person has thoughts of ending
        their life and keeps the conversation open (sources: ``RESOURCES_SOURCES.md``).
        """
        templates = self._templates.get(parse_locale(locale).language, self._templates["en"])
        listed = self.resources(Category.CRISIS, locale)
        raw = self._regions[self.region_for(locale)]["crisis"]  # hours before translation
        service = listed[next((i for i, e in enumerate(raw) if e.get("hours") == "24/7"), 0)]
        line = _format(service, templates.get("labels", {}))  # type: ignore[arg-type]
        return templates["check_in"].replace("{service}", line).strip(), (service,)

    def empty_reply(self, locale: str) -> str:
        """What to say when the model produced nothing usable."""
        templates = self._templates.get(parse_locale(locale).language, self._templates["en"])
        return templates["empty"]


def _resource(entry: Mapping[str, Any], language: str) -> Resource:
    local = {**entry, **entry.get("i18n", {}).get(language, {})}
    return Resource(
        name=local["name"],
        description=local.get("description", ""),
        phone=local.get("phone"),
        sms=local.get("sms"),
        url=local.get("url"),
        hours=local.get("hours"),
        source=entry["source"],
    )


def _format(r: Resource, labels: Mapping[str, str]) -> str:
    parts = [f"{labels.get('call', 'Call')} {r.phone}" if r.phone else None, r.sms, r.url]
    line = f"- {r.name}: " + " | ".join(p for p in parts if p)
    return line + (f" ({r.hours})" if r.hours else "")
