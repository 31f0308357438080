"""Builds tests/data/support_messages.csv: short support messages of our own, labelled with topic and sentiment.

Run from the project root: python tests/data/make_support_messages.py (seeded: the same file each time).
"""

import csv
import random

rng = random.Random(11)
subjects = {
    "billing": [
        "my invoice",
        "the charge on my card",
        "the refund for order {n}",
        "my monthly bill",
        "the subscription fee",
        "the payment I made on {d}",
        "the discount code",
        "my billing statement",
    ],
    "shipping": [
        "my parcel",
        "the delivery of order {n}",
        "the courier",
        "the package tracking",
        "the shipment to my address",
        "the delivery date",
        "the parcel box",
        "the express shipping",
    ],
    "product": [
        "the blender I bought",
        "the headphones",
        "this jacket",
        "the coffee machine",
        "the running shoes",
        "the phone case",
        "the desk lamp",
        "the vacuum cleaner",
    ],
    "account": [
        "my password reset",
        "logging into my account",
        "the two-factor code",
        "my profile settings",
        "the account verification email",
        "changing my email address",
        "my username",
        "the account lock",
    ],
}
positive = [
    "{s} was handled perfectly, thank you so much!",
    "I am really happy with {s}.",
    "Great job on {s}, everything worked.",
    "{S} exceeded my expectations.",
    "Thanks, {s} is sorted and I love it.",
    "Wonderful service regarding {s}!",
    "{S} works great, very pleased.",
]
negative = [
    "{S} is a disaster, I am furious.",
    "I am very disappointed with {s}.",
    "{S} is broken again and nobody helps.",
    "This is unacceptable: {s} is wrong for the third time.",
    "Terrible experience with {s}, I want my money back.",
    "{S} has been a nightmare, worst service ever.",
    "I hate how {s} was handled.",
]
neutral = [
    "I have a question about {s}.",
    "Could you tell me the status of {s}?",
    "Where can I find information about {s}?",
    "Please send me the details of {s}.",
    "I would like to change something about {s}.",
    "What are the options for {s}?",
    "Can someone check {s} for me?",
]
rows = []
for topic, subs in subjects.items():
    for sentiment, templates in (("positive", positive), ("negative", negative), ("neutral", neutral)):
        for _ in range(25):
            s = rng.choice(subs).format(n=rng.randint(1000, 9999), d=f"{rng.randint(1, 28)} March")
            t = rng.choice(templates)
            text = t.format(s=s, S=s[0].upper() + s[1:])
            rows.append((text, topic, sentiment))
rng.shuffle(rows)
rows = list(dict.fromkeys(rows))
with open("tests/data/support_messages.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "text", "topic", "sentiment"])
    for i, r in enumerate(rows):
        w.writerow([i, *r])
print(len(rows))
