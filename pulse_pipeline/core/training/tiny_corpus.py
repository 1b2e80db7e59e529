"""The words of the four shipped families that the `tiny` model's tokenizer is trained on.

`corpus()` is the text the byte-level BPE of `base_models.build_tiny` learns its merges from:
call-centre scenarios, ACCESS resource questions, article topics and score dimensions, a JSON
answer and digits. The tokenizer (and so the cached tiny model) depends on every line here and
on their order: change them and bump `base_models.TINY_RECIPE`. The demo-data generator
(`pulse_pipeline.demo.data`) draws its records from the same vocabulary.
"""

from __future__ import annotations

SCENARIOS = {
    "billing_dispute": (
        "I was charged twice for my subscription this month and I want the second charge reversed.",
        "I can see the duplicate charge of $49.99; I've raised a refund that will show in 3 to 5 business days.",
        ["billing", "refund"],
    ),
    "lost_card": (
        "I think I lost my card yesterday, I need it blocked right away.",
        "I've blocked the card ending 1111 and ordered a replacement, it should arrive within a week.",
        ["card_services", "fraud_prevention"],
    ),
    "address_change": (
        "I moved last month and need to update my mailing address.",
        "Your address is updated; you'll get a confirmation letter at the new address.",
        ["account_maintenance"],
    ),
    "cancellation": (
        "Honestly the service has been terrible and I want to cancel today.",
        "I'm sorry to hear that. I've processed the cancellation and waived the early termination fee.",
        ["cancellation", "retention", "complaint"],
    ),
    "technical_issue": (
        "The mobile app keeps logging me out every time I try to pay a bill.",
        "Please update the app to the latest version; I've also reset your session so you can log in again.",
        ["technical_support", "mobile_app"],
    ),
}

DIMENSIONS = (
    "clarity",
    "accuracy",
    "depth",
    "relevance",
    "originality",
    "structure",
    "engagement",
    "sourcing",
)
TOPICS = (
    "battery recycling",
    "urban heat islands",
    "open-source maintainers",
    "coastal erosion",
    "sleep research",
    "microgrids",
    "library funding",
    "wildfire smoke",
    "remote work",
    "vaccine logistics",
)

# Illustrative facts for the demo's source registry; not authoritative figures.
RESOURCES = {
    "delta": {
        "name": "Delta",
        "site": "NCSA",
        "cores": 128,
        "memory": "256 GB",
        "gpu": "NVIDIA A100 and A40",
    },
    "bridges-2": {"name": "Bridges-2", "site": "PSC", "cores": 128, "memory": "256 GB", "gpu": "NVIDIA V100"},
    "expanse": {"name": "Expanse", "site": "SDSC", "cores": 128, "memory": "256 GB", "gpu": "NVIDIA V100"},
    "anvil": {"name": "Anvil", "site": "Purdue", "cores": 128, "memory": "256 GB", "gpu": "NVIDIA A100"},
    "stampede3": {
        "name": "Stampede3",
        "site": "TACC",
        "cores": 112,
        "memory": "128 GB",
        "gpu": "Intel Max 1550",
    },
}
STATIC_QUESTIONS = (
    (
        "How many cores does a standard compute node on {name} have?",
        "A standard {name} compute node has {cores} CPU cores.",
        "compute-resources",
    ),
    (
        "How much memory is on a regular {name} node?",
        "Regular {name} nodes have {memory} of memory.",
        "compute-resources",
    ),
    ("What GPUs does {name} offer?", "{name} offers {gpu} GPUs.", "compute-resources"),
    ("Which site operates {name}?", "{name} is operated by {site}.", "compute-resources"),
    (
        "Where do I find the user guide for {name}?",
        "The {name} user guide is linked from its ACCESS resource page.",
        "documentation",
    ),
    (
        "Can I install my own Python packages on {name}?",
        "Yes: create a virtual environment or conda environment in your home or project space on {name}.",
        "software",
    ),
)


def corpus() -> list[str]:
    """Enough varied local text for a 2k-token vocabulary: the demo domains, JSON and digits."""
    lines = []
    for issue, resolution, topics in SCENARIOS.values():
        lines += [issue, resolution, " ".join(topics)]
    for facts in RESOURCES.values():
        for q, a, _ in STATIC_QUESTIONS:
            lines += [q.format(**facts), a.format(**facts)]
    lines += [
        f"Researchers studying {t} report changes in {y} data." for t in TOPICS for y in range(2015, 2027)
    ]
    lines += [
        '{"sentiment": "negative", "quality": 6, "topics": ["billing"], "action_detected": true}',
        "AGENT ACTIONS SCORE IMPACT COMPLIANCE FLAGS assessment timestamp_start timestamp_end",
        " ".join(DIMENSIONS),
        "0 1 2 3 4 5 6 7 8 9 10 12.5 49.99 100 2026-11-22 [EMAIL] [PHONE] [CARD] [IBAN] <<SRC:documentation:x>>",
    ]
    words = sorted({w for line in lines for w in line.split()})
    # Pad with word pairs so BPE sees enough merges (a few hundred templated lines alone give ~450 tokens).
    lines += [f"{a} {b}" for i, a in enumerate(words) for b in words[i + 1 : i + 9]]
    return lines
