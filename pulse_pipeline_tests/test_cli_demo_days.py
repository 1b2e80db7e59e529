"""The demo's data and the daily partitions agree: the demo covers the 14 UTC days up to today,
never a day before `annotations_start_date`, so every day it writes is a partition."""

import dataclasses
import datetime as dt

import orjson
import pytest

from pulse_pipeline.cli.demo import demo_file_days
from pulse_pipeline.cli.output import UserError
from pulse_pipeline.definitions import annotation_partitions
from pulse_pipeline.demo.data import DemoScale, write_demo_file

TODAY = dt.datetime.now(dt.UTC).date()


def _days_written(config, tmp_path) -> set[dt.date]:
    scale = dataclasses.replace(DemoScale().scaled(0.05), days=demo_file_days(config, TODAY))
    demo = write_demo_file(tmp_path / "demo.jsonl", anchor=TODAY, scale=scale, flawed=False)
    return {dt.date.fromisoformat(orjson.loads(line)["created_at"][:10]) for line in demo.path.read_bytes().splitlines()}


def test_every_day_of_the_shipped_demo_is_a_partition(config, tmp_path):
    days = _days_written(config, tmp_path)
    partitions = set(annotation_partitions(config).get_partition_keys())
    assert max(days) == TODAY and min(days) >= config.annotations_start_date
    assert min(days) == max(config.annotations_start_date, TODAY - dt.timedelta(days=13))
    assert {d.isoformat() for d in days} <= partitions


def test_a_start_three_days_ago_gives_four_days_of_demo(config, tmp_path):
    recent = config.model_copy(update={"annotations_start_date": TODAY - dt.timedelta(days=3)})
    assert demo_file_days(recent, TODAY) == 4
    assert min(_days_written(recent, tmp_path)) == TODAY - dt.timedelta(days=3)


def test_a_start_after_today_is_one_clear_line(config):
    later = config.model_copy(update={"annotations_start_date": TODAY + dt.timedelta(days=1)})
    with pytest.raises(UserError, match=r"^annotations_start_date \S+ in pulse.yaml is after today \(\S+\): no day to demo$"):
        demo_file_days(later, TODAY)
