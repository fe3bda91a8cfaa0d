"""Build the bundled factual-recall prompts ``probes/data/facts/facts_v1.jsonl`` (+ ``.meta.json``).

    python scripts/build_facts.py [--no-eval] [--out probes/data/facts]

Offline. Sources: the ``countryinfo`` package (country -> capital, region/subregion, first
official language code), with the language-name table below written for this project, plus a
hand-written landmark -> country table. Relations:

    capital     "What is the capital city of France?"      -> " Paris"
    continent   "Which continent is France in?"            -> " Europe"
    language    "What is the official language of France?" -> " French"
    capital_of  "Which country has Paris as its capital?" -> " France"
    landmark    "In which country is the Eiffel Tower?"    -> " France"

(A currency relation was tried and dropped: SmolLM2 words currencies as "Japanese yen", "US
dollar", so the first token of the unit word was its argmax on 1.6% of 190 prompts.)

Prompt format (SmolLM2-Instruct, see docs/factual.md): ``"User: <question>\\nAssistant: <sentence>"``,
the sentence ending right before the answer. Answer tokens follow the first-token rule of
``probes.factual.data``: within a relation, a value is kept only if its first SmolLM2 token is
shared by no other value of that relation (colliding values are dropped with all their prompts,
and listed in the meta file), and values whose first token is a stop word are dropped.
Subjects whose name has a comma or parenthesis, and values with "/" or missing, are skipped.

With evaluation (default) it loads SmolLM2 and stores its accuracy per relation in the meta
file: argmax token == answer token, and rank of the answer among the relation's candidate first
tokens.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VERSION = "v1"
STOP_TOKENS = {" the", " The", " a", " A", " of", " and", " in", " de", " la", " le", " el", " San", " Saint",
               " St", " Port", " New"}

LANGUAGES = {
    "en": "English", "English": "English", "fr": "French", "es": "Spanish", "ar": "Arabic", "pt": "Portuguese",
    "nl": "Dutch", "de": "German", "zh": "Chinese", "it": "Italian", "el": "Greek", "ko": "Korean",
    "ro": "Romanian", "my": "Burmese", "no": "Norwegian", "ps": "Pashto", "sq": "Albanian", "ca": "Catalan",
    "hy": "Armenian", "az": "Azerbaijani", "bn": "Bengali", "be": "Belarusian", "dz": "Dzongkha", "bs": "Bosnian",
    "ms": "Malay", "bg": "Bulgarian", "km": "Khmer", "hr": "Croatian", "cs": "Czech", "da": "Danish",
    "ti": "Tigrinya", "et": "Estonian", "am": "Amharic", "fo": "Faroese", "fi": "Finnish", "ka": "Georgian",
    "kl": "Greenlandic", "la": "Latin", "hu": "Hungarian", "is": "Icelandic", "hi": "Hindi", "id": "Indonesian",
    "fa": "Persian", "ga": "Irish", "he": "Hebrew", "ja": "Japanese", "kk": "Kazakh", "ky": "Kyrgyz", "lo": "Lao",
    "lv": "Latvian", "lt": "Lithuanian", "mk": "Macedonian", "dv": "Dhivehi", "mt": "Maltese", "mn": "Mongolian",
    "cnr": "Montenegrin", "ne": "Nepali", "pl": "Polish", "ru": "Russian", "rw": "Kinyarwanda", "sm": "Samoan",
    "sr": "Serbian", "sk": "Slovak", "sl": "Slovenian", "so": "Somali", "af": "Afrikaans", "si": "Sinhala",
    "sv": "Swedish", "tg": "Tajik", "sw": "Swahili", "th": "Thai", "tr": "Turkish", "tk": "Turkmen",
    "uk": "Ukrainian", "uz": "Uzbek", "bi": "Bislama", "vi": "Vietnamese",
}
SOUTH_AMERICA = {"Argentina", "Bolivia", "Brazil", "Chile", "Colombia", "Ecuador", "Guyana", "Paraguay", "Peru",
                 "Suriname", "Uruguay", "Venezuela", "French Guiana", "Falkland Islands"}
# (subject, article used before it in a sentence, country)
LANDMARKS = [
    ("Eiffel Tower", "the", "France"), ("Louvre", "the", "France"), ("Palace of Versailles", "the", "France"),
    ("Mont Saint-Michel", "", "France"), ("Colosseum", "the", "Italy"), ("Leaning Tower of Pisa", "the", "Italy"),
    ("Trevi Fountain", "the", "Italy"), ("Big Ben", "", "England"), ("Stonehenge", "", "England"),
    ("Tower of London", "the", "England"), ("Buckingham Palace", "", "England"), ("Taj Mahal", "the", "India"),
    ("Great Wall", "the", "China"), ("Forbidden City", "the", "China"), ("Kremlin", "the", "Russia"),
    ("Red Square", "", "Russia"), ("Hermitage Museum", "the", "Russia"), ("Lake Baikal", "", "Russia"),
    ("Sydney Opera House", "the", "Australia"), ("Uluru", "", "Australia"), ("Great Barrier Reef", "the", "Australia"),
    ("Brandenburg Gate", "the", "Germany"), ("Neuschwanstein Castle", "", "Germany"), ("Cologne Cathedral", "", "Germany"),
    ("Sagrada Familia", "the", "Spain"), ("Alhambra", "the", "Spain"), ("Prado Museum", "the", "Spain"),
    ("Acropolis", "the", "Greece"), ("Parthenon", "the", "Greece"), ("Machu Picchu", "", "Peru"),
    ("Christ the Redeemer statue", "the", "Brazil"), ("Pyramids of Giza", "the", "Egypt"), ("Petra", "", "Jordan"),
    ("Angkor Wat", "", "Cambodia"), ("Mount Fuji", "", "Japan"), ("Fushimi Inari shrine", "the", "Japan"),
    ("Table Mountain", "", "South Africa"), ("CN Tower", "the", "Canada"), ("Chichen Itza", "", "Mexico"),
    ("Burj Khalifa", "the", "United Arab Emirates"), ("Hagia Sophia", "the", "Turkey"), ("Blue Mosque", "the", "Turkey"),
    ("Matterhorn", "the", "Switzerland"), ("Atomium", "the", "Belgium"), ("Rijksmuseum", "the", "Netherlands"),
    ("Charles Bridge", "the", "Czech Republic"), ("Borobudur temple", "the", "Indonesia"),
    ("Petronas Towers", "the", "Malaysia"), ("Marina Bay Sands", "", "Singapore"), ("Schonbrunn Palace", "", "Austria"),
    ("Gyeongbokgung Palace", "", "Korea"), ("Halong Bay", "", "Vietnam"), ("Cliffs of Moher", "the", "Ireland"),
    ("Blue Lagoon", "the", "Iceland"), ("Galapagos Islands", "the", "Ecuador"), ("Serengeti", "the", "Tanzania"),
    ("Mount Kilimanjaro", "", "Tanzania"), ("Little Mermaid statue", "the", "Denmark"), ("Wawel Castle", "", "Poland"),
    ("Chain Bridge", "the", "Hungary"), ("Mount Everest", "", "Nepal"), ("Sigiriya rock fortress", "the", "Sri Lanka"),
    ("Shwedagon Pagoda", "the", "Myanmar"), ("Grand Palace in Bangkok", "the", "Thailand"),
    ("Moai statues of Easter Island", "the", "Chile"), ("Perito Moreno Glacier", "the", "Argentina"),
    ("Jeronimos Monastery", "the", "Portugal"), ("Geirangerfjord", "the", "Norway"), ("Vasa Museum", "the", "Sweden"),
    ("Temppeliaukio Church", "the", "Finland"),
]

TEMPLATES = {  # relation -> (question, sentence, relation words); {s} = subject (with article if any)
    "capital": ("What is the capital city of {s}?", "The capital city of {s} is", "capital city"),
    "continent": ("Which continent is {s} in?", "{S} is located on the continent of", "continent"),
    "language": ("What is the official language of {s}?", "The official language of {s} is", "official language"),
    "capital_of": ("Which country has {s} as its capital?", "{S} is the capital of", "capital"),
    "landmark": ("In which country is {s}?", "{S} is located in the country of", "country"),
}


def country_rows() -> list[dict]:
    from countryinfo._cache import load_countries

    rows = []
    for d in load_countries()["countries"].values():
        name = d.get("name") or ""
        if not name or any(c in name for c in ",()"):
            continue
        name = name[4:] if name.startswith("The ") else name
        rows.append({"name": name, "capital": d.get("capital"), "region": d.get("region"),
                     "subregion": d.get("subregion"), "language": (d.get("languages") or [None])[0]})
    return sorted(rows, key=lambda r: r["name"])


def continent(r: dict) -> str | None:
    reg = r["region"]
    if reg in ("Europe", "Asia", "Africa", "Oceania"):
        return reg
    if reg == "Americas":
        return "South America" if r["name"] in SOUTH_AMERICA else "North America"
    return None


def raw_triples() -> dict[str, list[tuple[str, str, str]]]:
    """relation -> [(subject, subject as written in the sentence, value)] before the token filter."""
    out = defaultdict(list)
    for r in country_rows():
        n = r["name"]
        cap = r["capital"]
        if isinstance(cap, str) and cap and "/" not in cap and not cap.startswith("The "):
            out["capital"].append((n, n, cap))
        if continent(r):
            out["continent"].append((n, n, continent(r)))
        if r["language"] in LANGUAGES:
            out["language"].append((n, n, LANGUAGES[r["language"]]))
        if isinstance(cap, str) and cap and "/" not in cap:
            out["capital_of"].append((cap, cap, n))
    for subj, art, country in LANDMARKS:
        out["landmark"].append((subj, f"{art} {subj}".strip(), country))
    return out


def build(tokenizer) -> tuple[list, dict]:
    """(list of FactPrompt, build report) with the first-token filter applied per relation."""
    from probes.factual.data import make_fact

    facts, report = [], {}
    for rel, triples in raw_triples().items():
        values = sorted({v for _, _, v in triples})
        first = {v: tokenizer(" " + v, add_special_tokens=False)["input_ids"][0] for v in values}
        by_tok = defaultdict(list)
        for v, t in first.items():
            by_tok[t].append(v)
        collided = sorted(v for vs in by_tok.values() if len(vs) > 1 for v in vs)
        stop = sorted(v for v, t in first.items() if tokenizer.decode([t]) in STOP_TOKENS or not tokenizer.decode([t]).strip())
        keep = [v for v in values if v not in set(collided) | set(stop)]
        cands = tuple(" " + v for v in keep)
        q, s_tpl, rel_words = TEMPLATES[rel]
        n = 0
        seen = set()
        for subj, written, v in triples:
            if v not in keep or (rel, subj) in seen:
                continue
            seen.add((rel, subj))
            cap_written = written[0].upper() + written[1:]
            prompt = f"User: {q.format(s=written)}\nAssistant: {s_tpl.format(s=written, S=cap_written)}"
            facts.append(make_fact(rel, subj, prompt, " " + v, cands, rel_words))
            n += 1
        report[rel] = {"n_prompts": n, "n_candidates": len(cands), "dropped_first_token_collisions": collided,
                       "dropped_stop_token_values": stop}
    return facts, report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "probes" / "data" / "facts"))
    ap.add_argument("--no-eval", action="store_true", help="skip the SmolLM2 accuracy measurement")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    import importlib.metadata as md

    import workbench as wb
    from probes.factual.data import accuracy_table, evaluate_facts
    from workbench.paths import atomic_write_bytes, atomic_write_json

    model = wb.load()
    facts, report = build(model.tokenizer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(f.to_json(), ensure_ascii=False) + "\n" for f in facts)
    atomic_write_bytes(out / f"facts_{VERSION}.jsonl", lines.encode("utf-8"))
    meta = {
        "version": VERSION, "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": f"countryinfo {md.version('countryinfo')} (capital, region/subregion, first language "
                  "code) + language-name and landmark tables in scripts/build_facts.py",
        "prompt_format": "User: <question>\\nAssistant: <sentence ending before the answer>",
        "answer_rule": "answer token = first token of the answer (with its leading space); within a relation every "
                       "kept value has a distinct first token (SmolLM2 tokenizer); colliding values and values "
                       "starting with a stop word are dropped",
        "tokenizer_of": model.info.name, "n_prompts": len(facts), "relations": report,
    }
    if not args.no_eval:
        evals = evaluate_facts(model, facts, batch_size=args.batch_size)
        table = accuracy_table(evals)
        print(table.to_string(float_format=lambda x: f"{x:.3f}"))
        meta["accuracy"] = {"model": model.info.name, "fingerprint": model.fingerprint,
                            "per_relation": json.loads(table.to_json(orient="index"))}
    atomic_write_json(out / f"facts_{VERSION}.meta.json", meta)
    print(f"wrote {len(facts)} prompts over {len(report)} relations to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
