"""`Settings`: the one reader of the environment; its new fields, `from_environment`, and a scan
that no other module of the package reads an environment variable."""

import ast

import pydantic
import pytest

from pulse_pipeline.settings import Settings, get_settings
from pulse_pipeline_tests.conftest import PROJECT

PACKAGE = PROJECT / "pulse_pipeline"

# Reads that only guard a write: the module defaults a library's variable (evaluate's cache
# folders) and reads it back to leave a value the user set in place.
READS_GUARDING_A_LIBRARY_DEFAULT = {"core/evaluation/metrics/__init__.py"}
# And the launcher's protocol, not settings: torchrun and accelerate tell each process its RANK,
# WORLD_SIZE and LOCAL_RANK.
READS_OF_THE_LAUNCHERS_PROTOCOL = {"core/training/distributed.py"}
# And the client serving code vendors: it runs in the serving app's process, never imports
# pulse_pipeline's settings, and reads only its own PULSE_CAPTURE_URL / PULSE_CAPTURE_TOKEN.
READS_OF_THE_STANDALONE_CLIENT = {"client.py"}

NEW_VARIABLES = (
    "PULSE_VLLM_ADAPTER_ROOT",
    "PULSE_CLINC150",
    "PULSE_TRAINING_LOCK_STALE_SECONDS",
    "PULSE_TRAINING_HEARTBEAT_SECONDS",
    "PULSE_TRAINING_LOCK_STALE_HOURS",
    "PULSE_JUDGE_TIMEOUT",
    "PULSE_JUDGE_MAX_CONCURRENCY",
    "PULSE_JUDGE_RETRIES",
)


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    """No new variable leaks in from the shell; the cached settings are read again."""
    for name in NEW_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults(pulse_env):
    s = get_settings()
    assert s.pulse_home == pulse_env.resolve()
    assert s.pulse_vllm_adapter_root is None
    assert s.pulse_clinc150 is None
    assert s.pulse_training_lock_stale_seconds == 120
    assert s.pulse_training_heartbeat_seconds == 15
    assert (s.pulse_judge_timeout, s.pulse_judge_max_concurrency, s.pulse_judge_retries) == (60, 4, 2)
    assert s.judge() is None  # PULSE_JUDGE_URL unset: no judge
    assert s.database_url == f"sqlite:///{pulse_env.resolve() / 'pulse.db'}"


def test_every_field_has_a_default_and_a_description():
    for name, field in Settings.model_fields.items():
        assert not field.is_required(), name
        assert field.description, name


def test_new_fields_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PULSE_VLLM_ADAPTER_ROOT", "/srv/pulse-artifacts")
    monkeypatch.setenv("PULSE_CLINC150", str(tmp_path / "clinc150"))
    s = get_settings()
    assert s.pulse_vllm_adapter_root == "/srv/pulse-artifacts"
    assert s.pulse_clinc150 == tmp_path / "clinc150"


def test_the_training_lock_fields(monkeypatch):
    monkeypatch.setenv("PULSE_TRAINING_LOCK_STALE_SECONDS", "300")
    monkeypatch.setenv("pulse_training_heartbeat_seconds", "2.5")  # any case
    s = get_settings()
    assert (s.pulse_training_lock_stale_seconds, s.pulse_training_heartbeat_seconds) == (300.0, 2.5)
    for name in ("PULSE_TRAINING_LOCK_STALE_SECONDS", "PULSE_TRAINING_HEARTBEAT_SECONDS"):
        for bad in ("0", "-1"):
            monkeypatch.setenv(name, bad)
            with pytest.raises(pydantic.ValidationError, match=name.lower()):
                Settings()
        monkeypatch.delenv(name)


def test_from_environment_tells_the_environment_from_a_default(monkeypatch):
    monkeypatch.setenv("PULSE_DATABASE_URL", "sqlite:////tmp/elsewhere.db")
    monkeypatch.setenv("PULSE_S3_ENDPOINT", "")  # empty: unset, as `os.environ.get` treated it
    s = get_settings()
    assert s.from_environment("PULSE_DATABASE_URL") and s.from_environment("pulse_database_url")
    assert s.from_environment("PULSE_HOME")  # the conftest sets it
    # Filled in from PULSE_HOME, not set: assigning the default must not count as the environment.
    assert s.pulse_artifacts and not s.from_environment("PULSE_ARTIFACTS")
    assert not s.from_environment("MLFLOW_TRACKING_URI")
    assert not s.from_environment("PULSE_S3_ENDPOINT")
    assert not s.from_environment("PULSE_VLLM_ADAPTER_ROOT")
    with pytest.raises(ValueError, match="PULSE_NO_SUCH_THING"):
        s.from_environment("PULSE_NO_SUCH_THING")


def test_resources_take_the_environment_through_the_settings(monkeypatch):
    import dagster as dg

    from pulse_pipeline.defs.resources import _from_env, default_resources

    monkeypatch.setenv("PULSE_DATABASE_URL", "sqlite:////tmp/elsewhere.db")
    monkeypatch.setenv("PULSE_VLLM_ADAPTER_ROOT", "/srv/pulse-artifacts")
    value = _from_env("PULSE_DATABASE_URL", "default")
    assert isinstance(value, dg.EnvVar) and value.env_var_name == "PULSE_DATABASE_URL"
    assert _from_env("PULSE_ARTIFACTS", "default") == "default"
    assert default_resources()["serving"].adapter_root == "/srv/pulse-artifacts"


def test_the_demo_finds_clinc150_through_the_settings(monkeypatch, tmp_path):
    from pulse_pipeline.cli.demo import _find_clinc150

    clinc = tmp_path / "clinc150"
    clinc.mkdir()
    (clinc / "data_full.json").write_text("{}")
    project = tmp_path / "project"  # no ../shared/data/clinc150 beside it
    assert _find_clinc150(project) is None
    monkeypatch.setenv("PULSE_CLINC150", str(clinc))
    get_settings.cache_clear()
    assert _find_clinc150(project) == clinc


def _is_os(node: ast.expr, attr: str) -> bool:
    """`os.<attr>`, or a bare `<attr>` (as after `from os import environ`)."""
    if isinstance(node, ast.Attribute):
        return node.attr == attr and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id == attr


def environment_reads(source: str) -> list[tuple[int, str]]:
    """(line, what) for every read of the environment: `os.environ.get(...)`, `os.getenv(...)` and
    `os.environ[...]` as a value. Writes (`os.environ[...] = `, `setdefault`, `pop`) are not reads."""
    reads = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "get" and _is_os(func.value, "environ"):
                reads.append((node.lineno, "os.environ.get"))
            elif _is_os(func, "getenv"):
                reads.append((node.lineno, "os.getenv"))
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and _is_os(node.value, "environ")
        ):
            reads.append((node.lineno, "os.environ[...]"))
    return sorted(reads)


def test_the_scan_finds_reads_and_leaves_writes():
    source = (
        "import os\n"
        "a = os.environ.get('A')\n"
        "b = os.getenv('B', '')\n"
        "c = os.environ['C']\n"
        "os.environ['D'] = 'x'\n"
        "os.environ.setdefault('E', 'x')\n"
        "os.environ.pop('F', None)\n"
        "del os.environ['G']\n"
        "def f():\n"
        "    return os.environ.get('H')\n"
    )
    assert environment_reads(source) == [
        (2, "os.environ.get"),
        (3, "os.getenv"),
        (4, "os.environ[...]"),
        (10, "os.environ.get"),
    ]


def test_settings_are_the_only_reader_of_the_environment():
    reads = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        found = environment_reads(path.read_text(encoding="utf-8"))
        if found and name != "settings.py":
            reads[name] = found
    allowed = (
        READS_GUARDING_A_LIBRARY_DEFAULT | READS_OF_THE_LAUNCHERS_PROTOCOL | READS_OF_THE_STANDALONE_CLIENT
    )
    assert {n: r for n, r in reads.items() if n not in allowed} == {}, (
        "read the variable through a field of pulse_pipeline.settings.Settings"
    )
    stale = allowed - reads.keys()
    assert not stale, f"{sorted(stale)} no longer read the environment: remove them from the allowed set"
