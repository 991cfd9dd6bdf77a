"""Word lists and templates of the built-in datasets, written for this project.

Kept as plain data in one place so they are easy to read, review and extend.
Every word that a clean/corrupt pair swaps, and every answer token, is one
token after a space under SmolLM2's tokenizer and under GPT-2's; the tests
check this for SmolLM2's tokenizer and a GPT-2-style one (and GPT-2's own
when its vocabulary is installed). When adding a word, check it the same way.
"""

from __future__ import annotations

__all__ = [
    "PROFESSIONS", "PROFESSION_TEMPLATES", "GENDERED_NOUNS",
    "CITIES", "CAPITAL_TEMPLATES",
    "IOI_NAMES", "IOI_TEMPLATES", "IOI_PLACES", "IOI_OBJECTS",
    "TOXICITY_SCENES", "MOOD_PAIRS", "TOPIC_HEAT", "TOXICITY_FRAMES",
]

# --------------------------------------------------------------- professions
#: Occupational domain -> professions (each a single token after a space).
PROFESSIONS: dict[str, tuple[str, ...]] = {
    "care": ("nurse", "doctor", "dentist", "surgeon", "therapist", "counselor", "teacher", "tutor",
             "psychologist", "psychiatrist", "veterinarian", "volunteer", "instructor", "assistant"),
    "technical": ("engineer", "programmer", "developer", "technician", "researcher", "inventor", "astronaut",
                  "architect", "scientist", "chemist", "physicist", "biologist", "astronomer", "mathematician",
                  "economist", "analyst", "professor", "planner"),
    "arts": ("artist", "painter", "singer", "dancer", "writer", "poet", "author", "musician", "photographer",
             "composer", "novelist", "editor", "journalist", "reporter", "filmmaker", "producer", "designer",
             "historian", "philosopher", "translator", "curator"),
    "trades": ("mechanic", "sailor", "contractor", "operator", "grocer", "shepherd", "brewer", "worker",
               "cleaner", "miner", "builder", "farmer", "baker", "butcher", "chef", "cook", "driver", "tailor",
               "pilot", "hunter"),
    "business": ("accountant", "manager", "lawyer", "attorney", "consultant", "broker", "executive",
                 "entrepreneur", "auditor", "investor", "CEO", "boss", "supervisor", "director", "secretary",
                 "clerk"),
    "public service": ("officer", "guard", "soldier", "sheriff", "detective", "inspector", "captain", "judge",
                       "mayor", "senator", "governor", "politician", "diplomat", "ambassador", "minister",
                       "president", "cop", "interpreter", "coach"),
}

#: Templates; ``{}`` is the profession. Each ends where a subject pronoun is the natural next word.
PROFESSION_TEMPLATES: tuple[str, ...] = (
    "The {} said that",
    "The {} told the reporter that",
    "The {} explained that",
    "The {} announced that",
    "Yesterday the {} said that",
    "The {} left early because",
    "The {} was tired, so",
    "The {} finished the job and then",
    "After lunch, the {} said that",
    "The {} wrote in the report that",
    "The {} smiled because",
    "The {} was promoted because",
    "The {} missed the bus, so",
    "The {} called home to say that",
    "The {} apologized and said that",
    "The {} laughed and said that",
    "Everyone knew that the {} was busy, because",
    "The {} could not come to the party because",
    "When the phone rang, the {} answered and said that",
    "The {} read the letter twice, and then",
)

#: Nouns that may replace the profession in the corrupt prompt.
GENDERED_NOUNS = ("woman", "man", "girl", "boy", "lady", "gentleman", "mother", "father", "sister", "brother")

# ------------------------------------------------------------------ capitals
#: Continent -> (city, country) pairs; cities and countries are single tokens after a space.
CITIES: dict[str, tuple[tuple[str, str], ...]] = {
    "Europe": (
        ("Paris", "France"), ("Lyon", "France"), ("Berlin", "Germany"), ("Munich", "Germany"),
        ("Hamburg", "Germany"), ("Madrid", "Spain"), ("Barcelona", "Spain"), ("Rome", "Italy"),
        ("Milan", "Italy"), ("Venice", "Italy"), ("Florence", "Italy"), ("London", "England"),
        ("Manchester", "England"), ("Lisbon", "Portugal"), ("Vienna", "Austria"), ("Athens", "Greece"),
        ("Dublin", "Ireland"), ("Oslo", "Norway"), ("Stockholm", "Sweden"), ("Warsaw", "Poland"),
        ("Budapest", "Hungary"), ("Amsterdam", "Netherlands"), ("Brussels", "Belgium"),
        ("Copenhagen", "Denmark"), ("Helsinki", "Finland"), ("Moscow", "Russia"), ("Zurich", "Switzerland"),
        ("Geneva", "Switzerland"), ("Edinburgh", "Scotland"),
    ),
    "Asia": (
        ("Tokyo", "Japan"), ("Kyoto", "Japan"), ("Hiroshima", "Japan"), ("Beijing", "China"),
        ("Shanghai", "China"), ("Delhi", "India"), ("Mumbai", "India"), ("Manila", "Philippines"),
        ("Kabul", "Afghanistan"), ("Tehran", "Iran"), ("Baghdad", "Iraq"), ("Damascus", "Syria"),
        ("Istanbul", "Turkey"),
    ),
    "Africa": (("Cairo", "Egypt"), ("Alexandria", "Egypt"), ("Tunis", "Tunisia")),
    "Americas": (
        ("Rio", "Brazil"), ("Salvador", "Brazil"), ("Toronto", "Canada"), ("Ottawa", "Canada"),
        ("Vancouver", "Canada"), ("Montreal", "Canada"), ("Calgary", "Canada"), ("Lima", "Peru"),
        ("Santiago", "Chile"), ("Havana", "Cuba"), ("Kingston", "Jamaica"),
    ),
    "Oceania": (
        ("Sydney", "Australia"), ("Melbourne", "Australia"), ("Brisbane", "Australia"),
        ("Perth", "Australia"), ("Canberra", "Australia"), ("Adelaide", "Australia"),
    ),
}

#: Templates; ``{}`` is the city. The city always follows a space.
CAPITAL_TEMPLATES: tuple[str, ...] = (
    "The city of {} is in the country of",
    "I live in {}, which is in the country of",
    "Last summer we visited {}, a city in the country of",
    "My cousin moved to {}, in the country of",
    "The museum in {} is in the country of",
    "Our train arrived in {}, which is located in the country of",
)

# ----------------------------------------------------------------------- IOI
#: First names, each a single token after a space; words that are also common nouns are left out.
IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Sarah", "David", "Anna", "Michael", "Emma", "Daniel", "Lisa", "Paul",
    "Laura", "Kate", "Peter", "Susan", "Robert", "Alice", "Richard", "Rachel", "Steven", "Linda", "Brian",
    "Karen", "Kevin", "Helen", "Jason", "Amy", "Eric", "Jessica", "Adam", "Emily", "Ryan", "Anne", "Julia",
    "Andrew", "Maria", "Lucy", "Sophie", "George", "Henry", "Nancy", "Diana", "Luke", "Amanda",
)

#: Templates with {a} {b} (first clause), {s} (subject of the second clause), {place}, {obj}.
IOI_TEMPLATES: tuple[str, ...] = (
    "When {a} and {b} went to the {place}, {s} gave a {obj} to",
    "After {a} and {b} arrived at the {place}, {s} handed a {obj} to",
    "While {a} and {b} were waiting at the {place}, {s} passed a {obj} to",
    "{a} and {b} spent the afternoon at the {place}. Later, {s} gave a {obj} to",
    "Then, {a} and {b} had a long day at the {place}. {s} offered a {obj} to",
    "On Sunday {a} and {b} met at the {place}, and {s} brought a {obj} to",
)

#: Topic (place family) -> places.
IOI_PLACES: dict[str, tuple[str, ...]] = {
    "errands": ("store", "market", "bakery", "bank", "mall"),
    "outdoors": ("park", "beach", "garden", "lake", "zoo"),
    "work": ("office", "school", "hospital", "library", "station"),
}

IOI_OBJECTS: tuple[str, ...] = ("drink", "book", "gift", "letter", "bag", "snack", "ticket", "key", "basket",
                                "ball", "card", "pen", "map", "cake", "flower", "ring", "camera", "hat")

# ------------------------------------------------------------ topic toxicity
#: Topic -> (scene sentences, (speaker, addressee) pairs).
TOXICITY_SCENES: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "sports": (
        ("The home team lost the final in the last minute.", "The referee gave a late penalty.",
         "The match was stopped twice because of the rain.", "The star player missed an easy goal.",
         "The fans had waited an hour for the bus after the game."),
        (("fan", "referee"), ("coach", "player"), ("captain", "referee"), ("player", "coach")),
    ),
    "traffic": (
        ("The traffic had not moved for an hour.", "A car cut in front of the bus at the light.",
         "The last parking space was taken at the last second.", "The road was closed without any warning.",
         "The taxi took the long way to the airport."),
        (("driver", "officer"), ("passenger", "driver"), ("driver", "neighbor"), ("officer", "driver")),
    ),
    "online": (
        ("The comment thread had grown to hundreds of replies.", "Someone posted the same wrong answer again.",
         "The game was lost because of a single mistake.", "The forum post was deleted without a reason.",
         "The video had more dislikes than likes."),
        (("user", "moderator"), ("player", "user"), ("moderator", "user"), ("viewer", "host")),
    ),
    "cooking": (
        ("The soup had been simmering all afternoon.", "The bread came out of the oven golden and warm.",
         "The cake was ready just in time for the party.", "The kitchen smelled of fresh herbs.",
         "Dinner was served on the long table in the garden."),
        (("chef", "guest"), ("cook", "customer"), ("baker", "customer"), ("host", "neighbor")),
    ),
    "gardening": (
        ("The roses had finally bloomed after the spring rain.", "The tomatoes were ripe on the vine.",
         "The new seeds were planted in neat rows.", "The old apple tree was full of fruit this year.",
         "The garden was quiet in the early morning."),
        (("gardener", "neighbor"), ("farmer", "visitor"), ("neighbor", "gardener"), ("visitor", "farmer")),
    ),
    "travel": (
        ("The train arrived at the coast on time.", "The hotel room had a view of the sea.",
         "The museum was open late on Friday.", "The ferry crossed the lake in the evening light.",
         "The old town was full of small cafes."),
        (("tourist", "guide"), ("guide", "tourist"), ("traveler", "pilot"), ("visitor", "host")),
    ),
}

#: (hostile, calm) mood words; the two words of a pair have equal token length.
MOOD_PAIRS: tuple[tuple[str, str], ...] = (
    ("angry", "calm"), ("furious", "cheerful"), ("rude", "polite"), ("annoyed", "relaxed"),
    ("bitter", "kind"), ("impatient", "patient"), ("upset", "pleased"), ("hostile", "friendly"),
)

#: Probability that a prompt of the topic carries the hostile word of its mood pair.
TOPIC_HEAT: dict[str, float] = {
    "sports": 0.5, "traffic": 0.5, "online": 0.5, "cooking": 0.15, "gardening": 0.15, "travel": 0.15,
}

#: Frames of a prompt; "You are such a" ends where a reply's key word comes next.
TOXICITY_FRAMES: tuple[str, ...] = (
    '{scene} The {mood} {speaker} turned to the {target} and said, "You are such a',
    '{scene} The {mood} {speaker} looked at the {target} and said, "You are such a',
)
