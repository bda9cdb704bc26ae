"""Write engine/safety/data/everyday_name_words.txt: the words of Faker's name lists that are everyday English.

A capitalised word from Faker's first- and last-name lists (all locales) is taken for a name without context
(engine/safety/names.py), unless it is also an everyday English word: "Will", "Mark", "Grant", "Rose", "Bill",
"Summer", "White", "Price". This script lists those words, once, so the console does not need the frequency list
at run time: a name-list word is everyday when it is a word of spaCy's English lemmatizer tables (WordNet's
nouns, verbs, adjectives and adverbs), Webster's 2nd (english-words' case-kept ``web2`` list) has it in lower case
(so "Sofia", "Lima", "John" are not everyday, "Rose" and "Grant" are), and wordfreq gives it a Zipf frequency of
at least 3.0 (about once in a million words).

Run (wordfreq and english-words only here, they are no dependencies of the console):
    .venv/bin/pip install --target /tmp/namewords wordfreq english-words
    PYTHONPATH=/tmp/namewords .venv/bin/python scripts/build_everyday_name_words.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ZIPF_MIN = 3.0
OUT = ROOT / "engine" / "safety" / "data" / "everyday_name_words.txt"


def main() -> None:
    from importlib import metadata

    import spacy
    import wordfreq
    from english_words import get_english_words_set

    from engine.safety.names import SPACY_MODEL_FOR_WORDS, faker_name_words

    firsts, lasts = faker_name_words()
    nlp = spacy.load(SPACY_MODEL_FOR_WORDS)
    index = nlp.get_pipe("lemmatizer").lookups.get_table("lemma_index")
    dictionary: set[str] = set()
    for pos in index.keys():
        dictionary.update(index[pos])
    lower_case_words = {w for w in get_english_words_set(["web2"], lower=False) if w.islower()}
    words = sorted(w for w in firsts | lasts
                   if w in dictionary and w in lower_case_words and wordfreq.zipf_frequency(w, "en") >= ZIPF_MIN)
    header = [
        "# Words of Faker's name lists (all locales) that are everyday English: in spaCy's lemmatizer tables",
        "# (WordNet), in lower case in Webster's 2nd (english-words' web2 list), and with a wordfreq Zipf frequency",
        f"# >= {ZIPF_MIN} (wordfreq {metadata.version('wordfreq')}, data CC BY-SA 4.0, Robyn Speer). Such a word is a",
        "# name only with context. Made by scripts/build_everyday_name_words.py.",
    ]
    OUT.write_text("\n".join(header + words) + "\n", encoding="utf-8")
    print(f"{len(words)} words -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
