"""A small climate-technology corpus with planted off-topic items, and a family that labels it.

On-topic items are about clean energy and emissions; off-topic ones about toothbrushes, baking
and football (the distillery's classic failure: an oracle that scores a toothbrush as climate
technology). Edge items match both prefilter rules (a toothbrush maker's solar roof) or neither.
Every item carries the label a person would give, so tests can also check agreement.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

from pulse_pipeline.core.families import PulseConfig, parse_config

ON_TOPIC = [
    "A startup in {city} built {tech} that cuts carbon emissions from {sector} by {n} percent.",
    "{city} opened {tech} that runs on solar power and helps replace a coal plant.",
    "Engineers in {city} showed that {tech} lowers the CO2 emissions of {sector}.",
    "{city} will fund {tech} to reach net zero carbon emissions in {sector} by 2040.",
]
TECH = ["a battery storage system", "a heat pump", "a wind turbine", "a carbon capture unit", "a solar farm"]
SECTOR = ["cement making", "steel plants", "home heating", "shipping", "farming"]
OFF_TOPIC = [
    "This electric toothbrush from {brand} has soft bristles, a two-minute timer and a travel case.",
    "Bake the {food} recipe for {n} minutes, then let it cool before you slice it.",
    "The football club in {city} signed a new striker from {brand} for {n} million.",
    "The {brand} toothbrush comes in three colours and its head is easy to replace.",
]
BRAND = ["Brightsmile", "Oralux", "Dentico", "Fresca"]
FOOD = ["banana bread", "apple pie", "chocolate cake", "lemon tart"]
EDGE = [
    "The toothbrush maker {brand} put solar panels on its factory roof in {city}.",
    "The city council of {city} met on Tuesday to discuss the school budget.",
    "A football stadium in {city} now runs on solar power and battery storage.",
]
CITIES = ["Oslo", "Lyon", "Austin", "Pune", "Leeds", "Osaka", "Quito", "Perth"]

FAMILY = {
    "description": "Is an article about climate technology?",
    "task": "classification",
    "annotation_kinds": ["intent_label"],
    "base_model": "minilm-l6",
    "labels": ["climate", "other"],
    "oracle": {
        "off_topic_label": "other",
        "prefilter": {
            "on_topic": [
                "carbon",
                "CO2",
                "solar",
                "wind turbine",
                "heat pump",
                "battery storage",
                "net zero",
            ],
            "off_topic": ["toothbrush", "recipe", "bake", "football"],
        },
        "max_new_tokens": 8,
    },
}

GOOD_PROMPT = """\
### system
Label each text climate (clean energy, batteries, heat pumps, wind, solar, carbon emissions) or
other (anything else). Answer with the label only.
### user
A startup in Berlin built a solar roof that cuts carbon emissions from offices by 40 percent.
### assistant
climate
### user
This toothbrush from Smilex has a timer and soft bristles.
### assistant
other
### user
Madrid will fund a heat pump to reach net zero carbon emissions in schools by 2035.
### assistant
climate
### user
Bake the cherry pie recipe for 45 minutes, then let it cool.
### assistant
other
### user
Rome opened a wind turbine that runs on solar power and helps replace a coal plant.
### assistant
climate
### user
The football club in Milan signed a new goalkeeper from Parma for 12 million.
### assistant
other
### user
The football club in Porto signed a new striker from Benfica for 30 million.
### assistant
other
### user
{{text}}"""

# Deliberately bad: it calls any product, technology or organisation "climate", and its examples
# teach that (the distillery's toothbrush).
BAD_PROMPT = """\
### system
Label each text climate if it is about a product, a technology or an organisation, other if not.
Answer with the label only.
### user
This toothbrush from Smilex has a timer and soft bristles.
### assistant
climate
### user
The football club in Milan signed a new goalkeeper from Parma for 12 million.
### assistant
climate
### user
Rome opened a wind turbine that runs on solar power.
### assistant
climate
### user
The bus to the airport was late again this morning.
### assistant
other
### user
{{text}}"""


def corpus(n_on: int = 30, n_off: int = 30, n_edge: int = 12, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []

    def fill(template: str) -> str:
        return template.format(
            city=rng.choice(CITIES), tech=rng.choice(TECH), sector=rng.choice(SECTOR), n=rng.randint(5, 90),
            brand=rng.choice(BRAND), food=rng.choice(FOOD),
        )  # fmt: skip

    for kind, templates, n, label in (
        ("on", ON_TOPIC, n_on, "climate"),
        ("off", OFF_TOPIC, n_off, "other"),
        ("edge", EDGE, n_edge, None),
    ):
        seen: set[str] = set()
        for i in itertools.count():
            if len(seen) >= n:
                break
            text = fill(templates[i % len(templates)])
            if text in seen:
                continue
            seen.add(text)
            item: dict[str, Any] = {"id": f"{kind}-{len(seen)}", "text": text}
            if label is not None and kind == "on" and len(seen) % 2 == 0:
                item["label"] = label  # half the on-topic items carry a person's label
            items.append(item)
    return items


def write_corpus(path: Path, **kwargs: Any) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in corpus(**kwargs)))
    return path


def climate_config(tmp_path: Path, prompt: str | None = GOOD_PROMPT, **oracle: Any) -> PulseConfig:
    """A pulse.yaml with the `climate` family (and its prompt file) under tmp_path."""
    family = json.loads(json.dumps(FAMILY))
    family["oracle"].update(oracle)
    if prompt is not None:
        (tmp_path / "climate-prompt.txt").write_text(prompt)
        family["oracle"]["prompt"] = "climate-prompt.txt"
    return parse_config(
        {"families": {"climate": family}}, source=str(tmp_path / "pulse.yaml"), base_dir=tmp_path
    )
