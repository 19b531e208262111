"""Seeded sentences for the demo's eight tasks, each with its own kind of text and labels that take reading.

- sentiment: product and film reviews; negation flips an adjective, and after 'but' only the second clause
  counts ("The plot was dull, but the acting was not bad at all." is positive);
- topic: news sentences (sports, business, science, politics) that often mention a word of another topic;
- tense: diary sentences whose verb form decides past / present / future, with time adverbs that are
  sometimes missing and sometimes misleading ("I used to ... but tomorrow");
- intent: requests to an assistant (weather, music, alarm, travel), phrased many ways;
- emotion: social-media posts (joy, anger, sadness, fear), some mentioning an event of another feeling;
- spam: text messages, spam or not, where ordinary messages also say "free", "call" or "win";
- question: trivia questions by the kind of answer (person, place, number, date): "in which ..." is a place
  or a date, "how ..." a number;
- animal: encyclopedia lines that never name the animal (mammal, bird, fish, insect), often with a trait
  several classes share ("lays eggs", "lives in the sea").

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
    "emotion": ["joy", "anger", "sadness", "fear"],
    "spam": ["ham", "spam"],
    "question": ["person", "place", "number", "date"],
    "animal": ["mammal", "bird", "fish", "insect"],
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


# --- emotion: social-media posts ------------------------------------------------------------------------
EVENTS = {
    "joy": ["just got the job offer", "my best friend surprised me with concert tickets",
            "we finally finished the marathon", "the baby took her first steps today", "my paper got accepted",
            "grandma is visiting for the whole summer"],
    "anger": ["the landlord kept my deposit again", "someone scratched my car in the car park",
              "they cancelled my flight without telling anyone", "my neighbour parked across my driveway again",
              "the council raised the rent for the third time", "the mechanic charged me twice for the same repair"],
    "sadness": ["my old dog passed away this morning", "she moved to another country last week",
                "nobody came to my birthday dinner", "the house I grew up in was sold",
                "I miss my dad every single day", "my best friend stopped answering my messages"],
    "fear": ["I keep hearing footsteps downstairs at night", "the test results come back tomorrow",
             "the plane has been shaking for an hour", "there is a strange man following me home",
             "the river is rising toward our street", "my interview is in ten minutes and my hands are shaking"],
}
POST_OPENERS = ["", "", "honestly ", "ok so ", "can't believe it, ", "update: ", "well, "]
POST_ENDINGS = ["", "", " lol", " !!", " #life", " tbh", " ...", " #monday", " what a day"]


def post(rng: random.Random) -> LabelledSentence:
    emotion = rng.choice(TASKS["emotion"])
    text = f"{rng.choice(POST_OPENERS)}{rng.choice(EVENTS[emotion])}"
    if rng.random() < 0.25:  # a second event of another feeling, mentioned in passing
        other = rng.choice([e for e in EVENTS if e != emotion])
        text = f"even though {rng.choice(EVENTS[other])}, {text}"
    return LabelledSentence(f"{text}{rng.choice(POST_ENDINGS)}", emotion)


# --- spam: text messages --------------------------------------------------------------------------------
SPAM = ["you have won a {prize}, call {number} to claim it", "URGENT your account is locked, verify at {site}",
        "free {prize} for the first 100 callers, text {code} to {short}",
        "congratulations! you were selected for a {prize}",
        "final notice: your parcel is held, pay the fee at {site}", "cheap loans approved in minutes, reply {code}",
        "your {prize} is waiting, claim before midnight at {site}"]
HAM = ["are we still on for {time}?", "can you pick up {item} on the way home", "running late, there in {n} minutes",
       "call me when you get this", "mum says dinner at {time}", "are you free {when}? want to grab {item}",
       "did you win the match {when}?", "thanks for the {item}, it was great", "I left the {item} at your place"]
MESSAGE_FILL = {"prize": ["cash prize", "holiday", "new phone", "gift card", "cruise"],
                "number": ["09061701461", "0800 123 456"],
                "site": ["bit.ly/claim-now", "secure-bank-check.com", "www.win-today.co"], "code": ["WIN", "YES", "GO"],
                "short": ["80082", "87121"], "time": ["7", "half six", "noon", "eight"], "n": ["5", "10", "20"],
                "item": ["milk", "the keys", "pizza", "a coffee", "the charger", "bread", "the tickets", "a jacket"],
                "when": ["tonight", "tomorrow", "later", "on Sunday", "after work"]}


def message(rng: random.Random) -> LabelledSentence:
    label = rng.choice(TASKS["spam"])
    template = rng.choice(SPAM if label == "spam" else HAM)
    text = template.format(**{k: rng.choice(v) for k, v in MESSAGE_FILL.items()})
    if rng.random() < 0.4:
        text = f"{rng.choice(['hey', 'hi', 'Dear customer,', 'ok', 'sorry', 'FYI', 'so'])} {text}"
    if rng.random() < 0.4:
        text += rng.choice([" xx", " thx", " :)", " Reply STOP to opt out", " T&Cs apply", " see you", " cheers"])
    return LabelledSentence(text.upper() if label == "spam" and rng.random() < 0.15 else text, label)


# --- question: trivia, by the kind of answer ------------------------------------------------------------
QUESTIONS = {
    "person": ["who wrote {work}", "which scientist discovered {thing}", "name the painter of {work}",
               "who was the first person to {feat}", "whose idea was {thing}",
               "which explorer led the trip to {place}"],
    "place": ["where is {landmark}", "in which country is {landmark}", "which city hosted the {event}",
              "where did the {event} take place", "what is the capital of {country}", "in which ocean is {island}"],
    "number": ["how many moons does {planet} have", "how tall is {landmark}", "what is the population of {country}",
               "how many players are in a {sport} team", "how far is {planet} from the sun",
               "how old was {person} at death"],
    "date": ["when did the {event} take place", "in which year was {work} written", "when was {landmark} built",
             "what year did {person} die", "on what date did the {event} end", "in which century did {feat} happen"],
}
TRIVIA_FILL = {"work": ["Hamlet", "the Mona Lisa", "War and Peace", "the Odyssey", "Guernica"],
               "thing": ["penicillin", "the theory of relativity", "radioactivity", "the printing press"],
               "feat": ["climb Everest", "fly solo across the Atlantic", "walk on the moon", "reach the South Pole"],
               "place": ["the Arctic", "the Amazon", "Antarctica"],
               "landmark": ["the Eiffel Tower", "the Great Wall", "Machu Picchu", "the Taj Mahal", "Big Ben"],
               "event": ["first modern Olympics", "Battle of Hastings", "1966 World Cup", "Treaty of Versailles talks"],
               "country": ["Canada", "Kenya", "Peru", "Norway", "Vietnam"],
               "island": ["Madagascar", "Tahiti", "Iceland"],
               "planet": ["Mars", "Jupiter", "Neptune"], "sport": ["rugby", "football", "volleyball"],
               "person": ["Mozart", "Napoleon", "Cleopatra", "Einstein", "Gandhi", "Shakespeare"]}


def question(rng: random.Random) -> LabelledSentence:
    kind = rng.choice(TASKS["question"])
    text = rng.choice(QUESTIONS[kind]).format(**{k: rng.choice(v) for k, v in TRIVIA_FILL.items()})
    if rng.random() < 0.4:
        opener = rng.choice(["quiz time:", "round two:", "for ten points,", "bonus question:", "next one,",
                             "easy one:"])
        text = f"{opener} {text}"
    if rng.random() < 0.3:
        text += rng.choice([", roughly", ", do you know", ", if you remember", " exactly"])
    return LabelledSentence(f"{text[0].upper()}{text[1:]}?", kind)


# --- animal: encyclopedia descriptions that never name the animal ---------------------------------------
TRAITS = {
    "mammal": ["is covered in thick fur", "feeds its young on milk", "gives birth to live young",
               "has long whiskers", "sweats to keep cool", "carries its baby in a pouch"],
    "bird": ["is covered in feathers", "has a hooked beak", "has hollow, light bones", "sits on its eggs in a nest",
             "sings at dawn to mark its territory", "sheds its flight feathers once a year"],
    "fish": ["breathes through gills", "has a tail fin and two side fins", "has a swim bladder to float",
             "lays thousands of eggs in the river", "senses movement with a line along its side",
             "swims in large schools"],
    "insect": ["has six jointed legs", "has two antennae", "has a hard outer skeleton", "hatches as a larva",
               "has compound eyes", "spins a cocoon before it changes form"],
}
SHARED_TRAITS = ["lives in the sea", "can fly short distances", "lays eggs", "is active at night",
                 "lives in large groups", "eats mostly seeds", "migrates every autumn", "is warm-blooded"]
CREATURES = ["This species", "The animal", "This creature", "The adult", "This small animal", "The female"]


def description(rng: random.Random) -> LabelledSentence:
    kind = rng.choice(TASKS["animal"])
    trait = rng.choice(TRAITS[kind])
    if rng.random() < 0.6:  # a trait that several classes share, before or after the telling one
        shared = rng.choice(SHARED_TRAITS)
        text = f"{rng.choice(CREATURES)} {shared} and {trait}" if rng.random() < 0.5 else \
            f"{rng.choice(CREATURES)} {trait}, and it {shared}"
    else:
        text = f"{rng.choice(CREATURES)} {trait}"
    return LabelledSentence(f"{text}.", kind)


GENERATORS = {"sentiment": review, "topic": news, "tense": diary, "intent": request, "emotion": post,
              "spam": message, "question": question, "animal": description}


def sentences(task: str, count: int, seed: int) -> list[LabelledSentence]:
    rng = random.Random(seed)
    return [GENERATORS[task](rng) for _ in range(count)]
