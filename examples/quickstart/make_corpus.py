"""Write the quick-start corpus: small, deterministic, written by this project.

Dialogues about everyday topics are composed from hand-written templates and slot fillers
(nothing is copied from any dataset) and laid out exactly like the official DailyDialog
release, so the quick start exercises the real ``prepare-dailydialog`` path:
``data/{train,validation,test}/dialogues_<split>.txt``, one dialogue per line, every
utterance followed by `` __eou__``.

    python examples/quickstart/make_corpus.py --output examples/quickstart/data
"""
from __future__ import annotations

import argparse
import logging
import os
import random

logger = logging.getLogger(__name__)

TOPICS = {
    "weather": {
        "items": ["the rain", "the snow", "the sunshine", "the wind", "the fog", "the storm"],
        "facts": ["it makes the streets very quiet", "it came early this year", "the radio said it will last all week",
                  "my garden needs it", "it kept me at home yesterday", "the children love it"],
        "actions": ["take an umbrella", "stay inside", "go for a walk", "wear a warm coat"],
    },
    "food": {
        "items": ["pasta", "rice soup", "apple pie", "green curry", "fresh bread", "tomato salad"],
        "facts": ["my aunt cooks it every sunday", "it is cheap and easy to make", "the new cafe sells it",
                  "it tastes better with lemon", "i learned the recipe from a friend", "it is good for a cold day"],
        "actions": ["cook dinner together", "try the new cafe", "buy some vegetables", "bake something tonight"],
    },
    "travel": {
        "items": ["the mountains", "the coast", "the old town", "the lake", "the island", "the capital"],
        "facts": ["the train there takes four hours", "the hotels are full in summer", "the views are wonderful",
                  "my brother went there last spring", "the museums are free on mondays", "the hiking paths are long"],
        "actions": ["book the tickets", "pack our bags", "rent a small car", "plan the route"],
    },
    "music": {
        "items": ["jazz", "the piano", "folk songs", "the violin", "old records", "the drums"],
        "facts": ["my neighbour plays it every evening", "the concert hall has a show on friday", "it helps me relax",
                  "i started lessons last year", "the band downtown is really good", "my father collects it"],
        "actions": ["go to the concert", "practise after dinner", "listen to the radio", "buy a new guitar string"],
    },
    "sports": {
        "items": ["football", "tennis", "swimming", "running", "basketball", "cycling"],
        "facts": ["the local club meets on tuesdays", "it keeps me healthy", "our team won the last match",
                  "the pool opens at seven", "my knee hurts after it", "the park has a new court"],
        "actions": ["join the club", "watch the match", "train in the morning", "buy new shoes"],
    },
    "books": {
        "items": ["mystery novels", "history books", "poetry", "science magazines", "comics", "travel guides"],
        "facts": ["the library has a great collection", "i read one every week", "my teacher recommended them",
                  "the bookshop has a sale", "they are perfect for the train", "my sister writes reviews of them"],
        "actions": ["visit the library", "start a reading club", "lend you my copy", "read before bed"],
    },
    "work": {
        "items": ["the new project", "the meeting", "the report", "the office move", "the training course", "the deadline"],
        "facts": ["the manager wants it finished soon", "it starts next monday", "everyone is a bit nervous about it",
                  "it took longer than we planned", "the team worked late for it", "it will change our schedule"],
        "actions": ["ask the manager", "finish the draft", "leave early today", "make a plan"],
    },
    "pets": {
        "items": ["my dog", "the cat", "the parrot", "our rabbit", "the goldfish", "the puppy"],
        "facts": ["it sleeps all afternoon", "it needs a walk twice a day", "the vet says it is healthy",
                  "it loves the garden", "it was a birthday present", "it wakes me up every morning"],
        "actions": ["feed it now", "take it to the park", "buy more food for it", "call the vet"],
    },
}

OPENERS = ["what do you think about {item} ?", "do you like {item} ?", "have you heard anything about {item} ?",
           "tell me about {item} .", "how do you feel about {item} ?"]
POSITIVE = ["i really like {item} . {fact} .", "oh , {item} is great . {fact} .", "i love {item} , {fact} ."]
NEGATIVE = ["i am not a big fan of {item} . {fact} .", "honestly , {item} is not for me , but {fact} ."]
FOLLOW_UPS = ["really ? why is that ?", "that is interesting . tell me more .", "i did not know that .", "is that so ?"]
DETAILS = ["well , {fact} .", "because {fact} .", "you know , {fact} ."]
SUGGESTIONS = ["maybe we should {action} .", "shall we {action} this weekend ?", "why don't we {action} ?"]
AGREE = ["sure , let us {action} .", "good idea , i would like to {action} .", "ok , i will {action} with you ."]
DECLINE = ["sorry , i am busy this week .", "i would rather not , maybe next time .", "i am not sure about that ."]
THANKS = ["great , see you then .", "thanks , that sounds nice .", "perfect , talk to you later ."]


def make_dialogue(rng: random.Random) -> list[str]:
    """One 4- to 6-turn dialogue on a random topic."""
    topic = TOPICS[rng.choice(sorted(TOPICS))]
    item, action = rng.choice(topic["items"]), rng.choice(topic["actions"])
    facts = rng.sample(topic["facts"], 2)
    turns = [rng.choice(OPENERS).format(item=item)]
    turns.append(rng.choice(POSITIVE if rng.random() < 0.75 else NEGATIVE).format(item=item, fact=facts[0]))
    if rng.random() < 0.6:
        turns.append(rng.choice(FOLLOW_UPS))
        turns.append(rng.choice(DETAILS).format(fact=facts[1]))
    turns.append(rng.choice(SUGGESTIONS).format(action=action))
    if rng.random() < 0.8:
        turns.append(rng.choice(AGREE).format(action=action))
        turns.append(rng.choice(THANKS))
    else:
        turns.append(rng.choice(DECLINE))
    return [t[0].upper() + t[1:] for t in turns]


def write_corpus(output: str, sizes: dict[str, int], seed: int = 7) -> None:
    """Write ``output/<split>/dialogues_<split>.txt`` for each split in ``sizes``."""
    rng = random.Random(seed)
    for split, n in sizes.items():
        os.makedirs(os.path.join(output, split), exist_ok=True)
        with open(os.path.join(output, split, f"dialogues_{split}.txt"), "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(" __eou__ ".join(make_dialogue(rng)) + " __eou__\n")
        logger.info("%s: %d dialogues", split, n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s | %(message)s")
    write_corpus(args.output, {"train": 800, "validation": 80, "test": 80}, args.seed)


if __name__ == "__main__":
    main()
