"""The resource catalogue: every entry sourced, every locale rendered, unknown -> fallback."""

from __future__ import annotations

import re

import pytest

from companion import Category, InvalidArgument, ResourceCatalogue
from companion.resources import FALLBACK_REGION, parse_locale

REQUIRED = ["US", "CA", "GB", "IE", "AU", "NZ", "IN", "DE", "FR", "ES", FALLBACK_REGION]


def test_required_regions_and_every_service_has_a_source(catalogue: ResourceCatalogue):
    assert set(REQUIRED) <= set(catalogue.regions)
    for region in catalogue.regions:
        for category in (Category.CRISIS, Category.MEDICAL):
            for r in catalogue.resources(category, f"en-{region}" if region != "INTL" else "en"):
                assert r.source.startswith(("https://", "http://")), (region, r.name)
        assert catalogue.resources(Category.CRISIS, f"en-{region}" if region != "INTL" else "en")


@pytest.mark.parametrize("lang", ["en", "fr", "de", "es"])
@pytest.mark.parametrize("region", REQUIRED)
def test_every_message_renders_without_placeholders(catalogue, lang, region):
    locale = lang if region == FALLBACK_REGION else f"{lang}-{region}"
    for category, failed in [
        (Category.CRISIS, False),
        (Category.MEDICAL, False),
        (Category.CRISIS, True),
    ]:
        text, listed = catalogue.message(category, locale, failed=failed)
        assert not re.search(r"[{}]", text)
        assert text.strip()
        for r in listed:
            assert r.name in text


def test_unknown_region_falls_back_to_international_with_emergency_services(catalogue):
    assert catalogue.region_for("pt-BR") == FALLBACK_REGION
    text, listed = catalogue.message(Category.CRISIS, "pt-BR")
    assert "emergency" in text.lower() and listed


def test_locale_language_picks_template_language(catalogue):
    fr, _ = catalogue.message(Category.CRISIS, "fr-CA")
    en, _ = catalogue.message(Category.CRISIS, "en-CA")
    assert fr != en and "988" in fr and "988" in en


@pytest.mark.parametrize("tag", ["", "english please", "e", "en-GB; drop table"])
def test_bad_locale_is_invalid(tag):
    with pytest.raises(InvalidArgument):
        parse_locale(tag)


def test_parse_locale_variants():
    assert parse_locale("en_gb").region == "GB"
    assert parse_locale("zh-Hant-TW").region == "TW"
    assert parse_locale("de").region is None
