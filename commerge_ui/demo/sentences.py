"""Seeded sentences for the demo's four tasks, each with its own kind of text and labels that take reading.

- sentiment: product and film reviews; negation flips an adjective, and after 'but' only the second clause
  counts ("The plot was dull, but the acting was not bad at all." is positive);
- topic: news sentences (sports, business, science, politics) that often mention a word of another topic;
- tense: diary sentences whose verb form decides past / present / future, with time adverbs that are
  sometimes missing and sometimes misleading ("I used to ... but tomorrow");
- intent: requests to an assistant (weather, music, alarm, travel), phrased many ways.

Each task has its own kind of text, as real merging benchmarks do: activation-matching merges (RegMean,
CoM) can only keep every expert's behaviour when the tasks' inputs can be told apart. (Labelling one pool
of sentences several ways made CoM memorise its calibration sentences; see the project notes.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TASKS = {
    "sentiment": ["negative", "positive"],
    "topic": ["sports", "business", "science", "politics"],
    "tense": ["past", "present", "future"],
    "intent": ["weather", "music", "alarm", "travel"],
}


@dataclass(frozen=True)
class LabelledSentence:
    text: str
    label: str


# --- sentiment: reviews ---------------------------------------------------------------------------------
REVIEWED = ["the film", "this blender", "the hotel room", "the new album", "this phone", "the sequel", "the service",
            "the soundtrack", "this laptop", "the restaurant", "the novel", "the headphones", "the ending", "the app"]
ASPECTS = ["the plot", "the battery", "the staff", "the sound quality", "the acting", "the price", "the design",
           "the pacing", "the screen", "the food", "the dialogue", "the delivery"]
POSITIVE = ["wonderful", "great", "excellent", "delightful", "fantastic", "pleasant", "brilliant", "impressive",
            "solid", "charming", "superb", "reliable"]
NEGATIVE = ["terrible", "awful", "disappointing", "boring", "dreadful", "annoying", "frustrating", "poor",
            "clumsy", "dull", "flimsy", "overpriced"]
INTENSIFIERS = ["", "", "really ", "quite ", "truly ", "rather ", "absolutely "]


def _opinion(rng: random.Random, thing: str, positive: bool) -> str:
    negated = rng.random() < 0.35
    adjective = rng.choice(POSITIVE if positive != negated else NEGATIVE)
    verb = rng.choice(["was", "is", "felt", "seemed"])
    return f"{thing} {verb} {'not ' if negated else ''}{rng.choice(INTENSIFIERS)}{adjective}"


def review(rng: random.Random) -> LabelledSentence:
    positive = rng.random() < 0.5
    if rng.random() < 0.35:
        text = f"{_opinion(rng, rng.choice(ASPECTS), not positive)}, but {_opinion(rng, rng.choice(REVIEWED), positive)}"
    else:
        text = _opinion(rng, rng.choice(REVIEWED + ASPECTS), positive)
        if rng.random() < 0.4:
            text += rng.choice([" and I would say so again", " overall", " in my opinion", " for the money"])
    return LabelledSentence(f"{text[0].upper()}{text[1:]}.", "positive" if positive else "negative")


# --- topic: news ----------------------------------------------------------------------------------------
NEWS = {
    "sports": (["the striker", "the home team", "the coach", "the champion", "the goalkeeper", "the relay team"],
               ["scored twice in the final", "won the league title", "was injured before the derby",
                "broke the world record", "signed a new contract with the club", "lost the semi-final on penalties"]),
    "business": (["the company", "the central bank", "shareholders", "the retailer", "the startup", "investors"],
                 ["reported record quarterly profits", "raised interest rates again", "announced a merger",
                  "cut hundreds of jobs", "saw its shares fall sharply", "opened new stores abroad"]),
    "science": (["researchers", "the space agency", "astronomers", "a team of biologists", "physicists", "the lab"],
                ["discovered a new species of frog", "launched a probe toward Jupiter", "sequenced the genome",
                 "observed a distant supernova", "published results on quantum sensors", "tested a new vaccine"]),
    "politics": (["the prime minister", "parliament", "the opposition leader", "the senate", "voters", "the mayor"],
                 ["passed the budget bill", "called an early election", "resigned after the scandal",
                  "vetoed the new law", "met foreign ministers for talks", "won the regional vote"]),
}
NEWS_ENDINGS = ["on Tuesday", "last night", "this week", "according to officials", "despite the protests",
                "earlier today", "after months of debate"]


def news(rng: random.Random) -> LabelledSentence:
    topic = rng.choice(list(NEWS))
    subjects, events = NEWS[topic]
    text = f"{rng.choice(subjects)} {rng.choice(events)}"
    if rng.random() < 0.5:
        text += f" {rng.choice(NEWS_ENDINGS)}"
    if rng.random() < 0.3:  # a distractor from another topic in a side clause
        other = rng.choice([t for t in NEWS if t != topic])
        text += f", while {rng.choice(NEWS[other][0])} watched"
    return LabelledSentence(f"{text[0].upper()}{text[1:]}.", topic)


# --- tense: diary ---------------------------------------------------------------------------------------
DIARY_VERBS = [("walked", "walk", "will walk", "to the market"), ("called", "call", "will call", "my sister"),
               ("cleaned", "clean", "will clean", "the kitchen"), ("painted", "paint", "will paint", "the fence"),
               ("wrote", "write", "will write", "a long letter"), ("met", "meet", "will meet", "old friends"),
               ("visited", "visit", "will visit", "my grandparents"), ("studied", "study", "will study", "for the exam"),
               ("fixed", "fix", "am going to fix", "the bicycle"), ("planted", "plant", "am going to plant", "tomatoes")]
TIMES = {"past": ["yesterday", "last night", "two days ago", "on Sunday"],
         "present": ["every morning", "usually", "on weekdays", "most days"],
         "future": ["tomorrow", "next week", "tonight", "on Friday"]}
SUBJECTS = ["I", "we", "my cousin and I", "the kids and I"]


def diary(rng: random.Random) -> LabelledSentence:
    tense = rng.choice(TASKS["tense"])
    past, present, future, rest = rng.choice(DIARY_VERBS)
    verb = {"past": past, "present": present, "future": future}[tense]
    text = f"{rng.choice(SUBJECTS)} {verb} {rest}"
    roll = rng.random()
    if roll < 0.45:
        text += f" {rng.choice(TIMES[tense])}"
    elif roll < 0.6:  # a misleading time word in a side clause
        text += f", unlike {rng.choice(TIMES[rng.choice([t for t in TIMES if t != tense])])}"
    return LabelledSentence(f"{text[0].upper()}{text[1:]}.", tense)


# --- intent: assistant requests -------------------------------------------------------------------------
INTENTS = {
    "weather": ["will it rain in {place} {when}", "what is the forecast for {place}", "do I need an umbrella {when}",
                "how cold will it be {when}", "is it sunny in {place} right now"],
    "music": ["play some jazz", "put on the latest album by {artist}", "skip this song", "turn the music up",
              "play something relaxing {when}", "shuffle my playlist"],
    "alarm": ["wake me up at {time}", "set an alarm for {time} {when}", "cancel my {time} alarm",
              "remind me at {time} to leave", "snooze the alarm"],
    "travel": ["book a train to {place} {when}", "find flights to {place}", "how long is the drive to {place}",
               "reserve a taxi for {time}", "get me a hotel in {place} {when}"],
}
FILL = {"place": ["Paris", "Oslo", "the airport", "Madrid", "my office", "Tokyo"],
        "when": ["tomorrow", "tonight", "this weekend", "on Monday", "later"],
        "artist": ["Adele", "the Beatles", "Miles Davis", "Coldplay"], "time": ["6 am", "seven thirty", "noon", "9 pm"]}
POLITE = ["", "", "please ", "could you ", "hey, ", "can you "]


def request(rng: random.Random) -> LabelledSentence:
    intent = rng.choice(list(INTENTS))
    text = rng.choice(INTENTS[intent]).format(**{k: rng.choice(v) for k, v in FILL.items()})
    if not text.startswith(("will", "what", "do ", "how", "is ")):  # politeness only on imperatives
        text = f"{rng.choice(POLITE)}{text}"
    return LabelledSentence(f"{text[0].upper()}{text[1:]}{'?' if rng.random() < 0.5 else ''}", intent)


GENERATORS = {"sentiment": review, "topic": news, "tense": diary, "intent": request}


def sentences(task: str, count: int, seed: int) -> list[LabelledSentence]:
    rng = random.Random(seed)
    return [GENERATORS[task](rng) for _ in range(count)]
