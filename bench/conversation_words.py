"""What the memory benchmark's conversation is made of: names, places and things, and each
fact's attribute with the words the conversation says it in (see :mod:`bench.conversation`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ATTRIBUTES",
    "CHAT",
    "CITIES",
    "PEOPLE_NAMES",
    "PERSON_ATTRIBUTES",
    "PROJECT_ATTRIBUTES",
    "PROJECT_NAMES",
    "TOPICS",
    "WEATHER",
    "Attribute",
    "words",
]


def words(text: str) -> list[str]:
    return text.split()


FIRST = words(
    "Alice Bruno Chloe Daniel Elena Felix Grace Hugo Ines Jonas Karin Lucas Maya Nils Olivia "
    "Pablo Quinn Rosa Samir Tara Umar Vera Walter Xenia Yusuf Zoe Anton Bianca Carlos Dana "
    "Emil Fatima Gustav Hanna Ivan Julia Kenji Lena Marco Nadia Oscar Priya Rafael Sofia "
    "Tomas Ursula Victor Wanda Yara Zane Amir Beatrix Cyril Delia Erik Flora Gino Helga Igor "
    "Jana Kofi Leila Milo Nora Otto Pia Ravi Selma Theo Uma Vito Wilma Aiko Boris Celine "
    "Dario Elif Farid Gemma Hector"
)
LAST = words(
    "Moreno Keller Novak Rossi Schmidt Dubois Jensen Kowalski Silva Tanaka Okafor Larsen "
    "Petrov Haddad Costa Fischer Nguyen Bauer Romano Varga Lindqvist Mendes Horvat Adeyemi "
    "Becker Castillo Doyle Eriksen Ferreira Gallo Hoffmann Ibrahim Janssen Kaur Laurent Meyer "
    "Nakamura Olsen Park Quist Richter Santos Toivonen Urban Vidal Weber Yilmaz Zimmer Abbott "
    "Brandt Conti Dalton Esposito Fontaine Greco Hansen Ivanova Jovanovic Klein Lombardi "
    "Marsh Nielsen Ortega Pereira Reyes Sato Thorne Ueda Vogel Wagner Xu Young Zhou Aldana "
    "Berg Carr Duarte Engel Frost Gruber"
)
CITIES = words(
    "Berlin Lisbon Paris Rome Madrid Vienna Prague Oslo Dublin Athens Warsaw Budapest Zurich "
    "Munich Hamburg Milan Naples Porto Seville Valencia Lyon Marseille Brussels Antwerp "
    "Amsterdam Rotterdam Copenhagen Stockholm Helsinki Tallinn Riga Vilnius Krakow Bratislava "
    "Ljubljana Zagreb Belgrade Bucharest Istanbul Edinburgh Glasgow Manchester Bristol London "
    "Toronto Montreal Boston Chicago Denver Seattle Austin Tokyo Osaka Seoul Singapore Sydney "
    "Melbourne Auckland Nairobi Lagos"
)
COMPANIES = words(
    "Acme Globex Initech Umbrella Hooli Vandelay Stark Wayne Cyberdyne Soylent Tyrell Wonka "
    "Aperture Massive Oscorp Gringotts Monarch Nakatomi Virtucon Dunder Prestige Sterling "
    "Wernham Bluth Krusty Gekko Duff Ollivander Zorg Nimbus Quantum Vertex Lumina Helix Orbit "
    "Pinnacle Beacon Summit Cascade Horizon Keystone Meridian Northwind Contoso Fabrikam "
    "Tailspin Litware Proseware Adatum Trilogic"
)
ROLES = words(
    "engineer designer nurse teacher architect accountant chef pilot lawyer pharmacist "
    "journalist photographer librarian electrician plumber dentist veterinarian translator "
    "economist geologist surgeon paramedic carpenter baker barista florist mechanic programmer "
    "analyst consultant recruiter therapist physicist chemist biologist historian sculptor "
    "violinist gardener firefighter"
)
FOODS = words(
    "sushi ramen lasagna paella tacos curry pho dumplings risotto falafel goulash pierogi "
    "moussaka burritos pancakes croissants gnocchi kimchi bibimbap couscous hummus shakshuka "
    "ceviche empanadas biryani fondue raclette tiramisu churros baklava gazpacho carbonara "
    "bruschetta tempura samosas ravioli brioche waffles porridge cheesecake"
)
HOBBIES = words(
    "climbing painting knitting surfing gardening baking cycling running swimming fishing "
    "hiking sailing pottery chess photography birdwatching skiing rowing archery fencing "
    "juggling calligraphy woodworking origami kayaking bouldering snowboarding skating "
    "drumming singing dancing yoga karate judo boxing tennis badminton golf bowling beekeeping"
)
PETS = words(
    "beagle poodle labrador dachshund terrier collie husky corgi greyhound parrot canary "
    "tortoise hamster rabbit ferret iguana goldfish chinchilla hedgehog gecko cockatiel budgie "
    "axolotl pug spaniel bulldog tabby siamese dalmatian whippet"
)
LANGUAGES = words(
    "Spanish French German Italian Portuguese Japanese Korean Mandarin Arabic Russian Polish "
    "Dutch Swedish Norwegian Danish Finnish Greek Turkish Hindi Swahili Hebrew Czech Hungarian "
    "Romanian Vietnamese Thai Icelandic Welsh Catalan Latin"
)
CARS = words(
    "Volvo Fiat Tesla Toyota Honda Skoda Peugeot Renault Citroen Mazda Subaru Kia Hyundai "
    "Audi Porsche Ferrari Jeep Saab Lancia Alfa Dacia Opel Lexus Nissan Suzuki Jaguar Bentley "
    "Cupra Rover Lada"
)
ADJECTIVES = words(
    "Amber Silent Crimson Golden Hidden Rapid Frozen Bright Iron Silver Hollow Lunar Solar "
    "Cobalt Velvet Quiet Scarlet Emerald Swift Northern Distant Brave Copper Azure Marble "
    "Ivory Jade Onyx Coral Misty"
)
NOUNS = words(
    "Falcon Harbor Lantern Orchid River Comet Meadow Anchor Compass Ember Glacier Island "
    "Jungle Kestrel Lotus Maple Nebula Oasis Pebble Quartz Raven Sparrow Thistle Tundra Willow "
    "Yarrow Zephyr Badger Cedar Delta Fjord Grove Heron Iris Juniper Koala Lynx Magpie Nectar "
    "Otter"
)
STATUSES = words(
    "planning prototyping blocked testing reviewing paused shipped cancelled delayed piloting "
    "scaling archived"
)
MONTHS = words(
    "January February March April May June July August September October November December"
)
TOPICS = [
    "football", "politics", "a podcast", "the new phone", "taxes", "a movie", "a concert",
    "board games", "the election", "housing prices", "cryptocurrency", "the climate",
    "a novel", "the stock market", "the holidays", "a wedding", "a birthday party",
    "a museum", "a recipe", "electric bikes", "the Olympics", "a video game", "jazz",
    "space travel", "artificial intelligence", "a documentary", "the neighbours", "coffee",
    "a cooking show", "the marathon", "a startup idea", "retirement plans", "the garden",
    "an old friend", "school memories", "a power cut", "a broken laptop", "a job interview",
    "the dentist", "a hiking trail",
]  # fmt: skip
WEATHER = words("lovely awful rainy windy sunny freezing humid grey stormy mild")


@dataclass(frozen=True)
class Attribute:
    """A fact's kind: its values and how the conversation words it."""

    name: str
    entity: Literal["person", "project"]
    values: Sequence[str]
    # Words that mean this attribute: they share one concept token in the embedder.
    concept: Sequence[str]
    state: Sequence[str]
    change: Sequence[str]
    correct: Sequence[str]
    restate: Sequence[str]
    question: Sequence[str]
    # Chit-chat worded like the fact, about another value ({x}).
    hard: Sequence[str]


PEOPLE_NAMES = [f"{first} {last}" for first in FIRST for last in LAST]

ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "home", "person", CITIES,
        words("live lives living moved relocated based apartment city home"),
        ["{p} lives in {v}.", "{p} is based in {v} these days.", "{p} has an apartment in {v}."],
        ["{p} moved to {v}.", "{p} relocated to {v} last month.", "{p} lives in {v} now."],
        ["Correction: {p} does not live in {o}, {p} lives in {v}."],
        ["{p} still lives in {v}."],
        ["Where does {p} live now?", "Which city is {p} based in?"],
        ["{p} says {x} would be a lovely city to live in someday.", "{p} is visiting {x} soon."],
    ),
    Attribute(
        "employer", "person", COMPANIES,
        words("work works working employed employs joined company job"),
        ["{p} works at {v}.", "{p} is employed by {v}."],
        ["{p} joined {v}.", "{p} left for a job at {v}.", "{p} works at {v} now."],
        ["Correction: {p} does not work at {o}; {p} works at {v}."],
        ["{p} still works at {v}."],
        ["Where does {p} work?", "Which company employs {p}?"],
        ["{p} had an interview at {x} but turned it down.", "{p}'s brother works at {x}."],
    ),
    Attribute(
        "role", "person", ROLES,
        words("profession role position retrained occupation"),
        ["{p} is a {v} by profession.", "{p}'s role is {v}."],
        ["{p} retrained and is now a {v}.", "{p} got a new position as {v}.",
         "{p}'s role changed to {v}."],
        ["Correction: {p} is not a {o}, {p} is a {v} by profession."],
        ["{p} is still a {v} by profession."],
        ["What is {p}'s profession?", "What role does {p} have?"],
        ["{p} met a {x} at the party.", "{p} wanted to be a {x} as a child."],
    ),
    Attribute(
        "food", "person", FOODS,
        words("favourite food dish eating loves eat"),
        ["{p}'s favourite food is {v}.", "{p} loves eating {v}."],
        ["{p} has a new favourite dish: {v}.", "These days {p}'s favourite food is {v}."],
        ["Correction: {p}'s favourite food is not {o}, it is {v}."],
        ["{p} still loves eating {v}."],
        ["What is {p}'s favourite food?", "Which dish does {p} love most?"],
        ["{p} tried {x} at a new restaurant and did not like it.", "{p} cooked {x} for a friend."],
    ),
    Attribute(
        "hobby", "person", HOBBIES,
        words("hobby hobbies weekends weekend took pastime"),
        ["{p} spends the weekends on {v}.", "{p}'s hobby is {v}."],
        ["{p} took up {v}.", "{p} has switched hobbies to {v}."],
        ["Correction: {p}'s hobby is not {o}, it is {v}."],
        ["{p} still spends the weekends on {v}."],
        ["What hobby does {p} have?", "What does {p} do at the weekends?"],
        ["{p} watched a documentary about {x}.", "{p} thinks {x} looks dangerous."],
    ),
    Attribute(
        "pet", "person", PETS,
        words("pet pets adopted owns animal"),
        ["{p} has a {v} as a pet.", "{p} owns a {v}."],
        ["{p} adopted a {v}.", "{p}'s pet now is a {v}."],
        ["Correction: {p}'s pet is not a {o}, it is a {v}."],
        ["{p} still has a {v} as a pet."],
        ["What pet does {p} have?", "What animal does {p} own?"],
        ["{p} was bitten by a neighbour's {x}.", "{p} is allergic to every {x}."],
    ),
    Attribute(
        "language", "person", LANGUAGES,
        words("learning learn language studying study classes"),
        ["{p} is learning {v}.", "{p} takes evening classes in {v}."],
        ["{p} switched to studying {v}.", "{p} started learning {v} instead."],
        ["Correction: {p} is not learning {o}; {p} is learning {v}."],
        ["{p} is still learning {v}."],
        ["Which language is {p} learning?", "What language does {p} study?"],
        ["{p} watched a film in {x} with subtitles.", "{p}'s neighbour speaks {x}."],
    ),
    Attribute(
        "car", "person", CARS,
        words("drive drives driving car bought"),
        ["{p} drives a {v}.", "{p}'s car is a {v}."],
        ["{p} bought a {v}.", "{p} sold the old car and drives a {v} now."],
        ["Correction: {p} does not drive a {o}, {p} drives a {v}."],
        ["{p} still drives a {v}."],
        ["What car does {p} drive?", "Which car does {p} have?"],
        ["{p} rented a {x} on holiday.", "{p} says a {x} is too expensive."],
    ),
    Attribute(
        "status", "project", STATUSES,
        words("status phase progressed stage"),
        ["{p} is in the {v} phase.", "The status of {p} is {v}."],
        ["{p} has progressed to {v}.", "The status of {p} changed to {v}."],
        ["Correction: {p} is not {o}, its status is {v}."],
        ["{p} is still in the {v} phase."],
        ["What is the status of {p}?", "What phase is {p} in?"],
        ["The team joked that {p} would be {x} forever.", "{p} came up at the standup."],
    ),
    Attribute(
        "lead", "project", PEOPLE_NAMES,
        words("leads lead led owner took charge"),
        ["{v} leads {p}.", "{p} is led by {v}."],
        ["{v} took over {p}.", "{p} is now led by {v}."],
        ["Correction: {o} does not lead {p}; {v} leads it."],
        ["{v} still leads {p}."],
        ["Who leads {p}?", "Who is in charge of {p}?"],
        ["{x} reviewed a design document for {p}.", "{x} asked a question about {p}."],
    ),
    Attribute(
        "deadline", "project", MONTHS,
        words("due deadline slipped date"),
        ["{p} is due in {v}.", "The deadline for {p} is {v}."],
        ["The deadline for {p} slipped to {v}.", "{p} is now due in {v}."],
        ["Correction: {p} is not due in {o}, it is due in {v}."],
        ["{p} is still due in {v}."],
        ["When is {p} due?", "What is the deadline for {p}?"],
        ["{p} had a demo in {x}.", "{p} was presented to the board in {x}."],
    ),
)  # fmt: skip
PERSON_ATTRIBUTES = [a for a in ATTRIBUTES if a.entity == "person"]
PROJECT_ATTRIBUTES = [a for a in ATTRIBUTES if a.entity == "project"]
PROJECT_NAMES = [f"Project {adjective} {noun}" for adjective in ADJECTIVES for noun in NOUNS]
CHAT = [
    "Had lunch with {p}; we talked about {t}.",
    "{p} sent me a funny video about {t}.",
    "{p} asked how my weekend was.",
    "Reminder: call {p} about {t}.",
    "{p} recommended a podcast about {t}.",
    "{p} complained about the traffic in {c}.",
    "The weather was {w} today.",
    "I read an article about {t}.",
    "{p} and I argued about {t}.",
    "{p} is going to a concert in {c}.",
    "Remind me to buy a gift for {p}.",
    "{p} shared photos from a trip to {c}.",
    "Can you summarise what we said about {t}?",
    "{p} could not stop talking about {t}.",
]
