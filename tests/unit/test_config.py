"""One frozen settings object from TOML + environment; errors name the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from riverbed.streams.config import load_settings, settings_from_dict
from riverbed.streams.errors import ConfigError
from riverbed.streams.history_log import index_key, index_key_model
from riverbed.streams.topics import riverbed_topics
from tests.conftest import CONFIG

ROOT = Path(__file__).resolve().parents[2]
MODEL = {"name": "m", "pipeline": [{"linear_model.LogisticRegression": {}}]}


def test_example_config_loads() -> None:
    settings = load_settings(ROOT / "config" / "riverbed.toml", env={})
    assert settings.models[0].name == "agrawal-lr"
    assert settings.worker.web_host == "127.0.0.1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.worker.web_port = 1  # type: ignore[misc]


def test_environment_overrides() -> None:
    env = {"RIVERBED_BROKER__BOOTSTRAP_SERVERS": "kafka:9092", "RIVERBED_TOPICS__PARTITIONS": "8",
           "RIVERBED_WORKER__PROFILE": "low-latency", "OTHER": "x"}
    settings = settings_from_dict({"models": [MODEL]}, env=env)
    assert settings.broker.bootstrap_servers == "kafka:9092"
    assert settings.topics.partitions == 8
    assert settings.worker.effective_fetch_max_wait_ms == 20


@pytest.mark.parametrize("raw,env,field", [
    ({"topics": {"partitions": 0}, "models": [MODEL]}, {}, "topics.partitions"),
    ({"topics": {"partitions": "many"}, "models": [MODEL]}, {}, "topics.partitions"),
    ({"worker": {"profile": "fast"}, "models": [MODEL]}, {}, "worker.profile"),
    ({"worker": {"fetch_max_wait_ms": 5}, "models": [MODEL]}, {}, "worker.fetch_max_wait_ms"),
    ({"models": [{**MODEL, "replica_state_every_steps": 0}]}, {},
     "models[0].replica_state_every_steps"),
    ({"models": [{**MODEL, "replica_catch_up": "gossip"}]}, {}, "models[0].replica_catch_up"),
    ({"worker": {"nope": 1}, "models": [MODEL]}, {}, "worker.nope"),
    ({"models": [MODEL]}, {"RIVERBED_LIMITS__MAX_FEATURES": "x"}, "limits.max_features"),
    ({"models": [MODEL]}, {"RIVERBED_NOPE__X": "1"}, "RIVERBED_NOPE__X"),
    ({}, {}, "models"),
    ({"models": [MODEL, MODEL]}, {}, "models.name"),
    ({"models": [{"name": "m", "pipeline": []}]}, {}, "models[0].pipeline"),
    ({"models": [{"name": "a b", "pipeline": MODEL["pipeline"]}]}, {}, "models[0].name"),
    ({"broker": {"bootstrap_servers": "nohost"}, "models": [MODEL]}, {},
     "broker.bootstrap_servers"),
    ({"extra": {}, "models": [MODEL]}, {}, "extra"),
])
def test_invalid_config_names_the_field(raw: dict, env: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw, env=env)
    assert info.value.field == field
    assert field in str(info.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[broker\n")
    with pytest.raises(ConfigError):
        load_settings(bad, env={})


REGISTRY = "https://registry.example:8081"


@pytest.mark.parametrize("registry,env,field", [
    ({"url": "ftp://x"}, {}, "registry.url"),
    ({"url": "http://user:pw@registry:8081"}, {}, "registry.url"),
    ({"url": REGISTRY, "password": "in-clear"}, {}, "registry.password"),
    ({"url": REGISTRY, "username": "u"}, {}, "registry.username"),
    ({"url": REGISTRY}, {"RIVERBED_REGISTRY__PASSWORD": "pw"}, "registry.username"),
    ({"url": REGISTRY, "username": "u", "password_file": "/f"},
     {"RIVERBED_REGISTRY__PASSWORD": "pw"}, "registry.password_file"),
    ({"url": REGISTRY, "key_file": "k.pem"}, {}, "registry.key_file"),
    ({"url": "http://registry:8081", "ca_file": "ca.pem"}, {}, "registry.ca_file"),
    ({"url": REGISTRY, "cache_size": 0}, {}, "registry.cache_size"),
    ({"url": REGISTRY, "backoff_initial_s": 2, "backoff_max_s": 1}, {}, "registry.backoff_max_s"),
])
def test_invalid_registry_settings_name_the_field(registry: dict, env: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"registry": registry, "models": [MODEL]}, env=env)
    assert info.value.field == field
    assert "in-clear" not in str(info.value) and "pw@" not in str(info.value)


def test_registry_settings_with_the_password_from_the_environment() -> None:
    env = {"RIVERBED_REGISTRY__URL": REGISTRY, "RIVERBED_REGISTRY__USERNAME": "ci",
           "RIVERBED_REGISTRY__PASSWORD": "s3cret", "RIVERBED_REGISTRY__CHECK_HOSTNAME": "no"}
    settings = settings_from_dict({"models": [MODEL]}, env=env)
    assert settings.registry.url == REGISTRY and settings.registry.password == "s3cret"
    assert not settings.registry.check_hostname
    assert "s3cret" not in repr(settings)


def test_files_named_in_the_config_are_relative_to_its_directory_not_the_current_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "riverbed.toml").write_text(
        '[registry]\nurl = "https://registry:8081"\nusername = "ci"\n'
        'password_file = "secrets/registry"\nca_file = "tls/ca.pem"\n'
        'cert_file = "tls/client.pem"\nkey_file = "/abs/client.key"\n'
        '[history]\nsnapshot_key_file = "keys/snapshot.key"\n'
        '[[models]]\nname = "m"\npipeline = [{"linear_model.LogisticRegression" = {}}]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings("../etc/riverbed.toml", env={})
    assert settings.registry.password_file == str(etc / "secrets" / "registry")
    assert settings.registry.ca_file == str(etc / "tls" / "ca.pem")
    assert settings.registry.cert_file == str(etc / "tls" / "client.pem")
    assert settings.registry.key_file == "/abs/client.key"
    assert settings.history.snapshot_key_file == str(etc / "keys" / "snapshot.key")
    default = settings_from_dict({"models": [MODEL]}, env={})
    assert default.history.snapshot_key_file == str(Path("~/.riverbed/snapshot.key").expanduser())


def test_the_deprecated_broker_schema_registry_url_still_works() -> None:
    old = settings_from_dict({"broker": {"schema_registry_url": REGISTRY}, "models": [MODEL]})
    assert old.registry.url == REGISTRY
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"broker": {"schema_registry_url": REGISTRY},
                            "registry": {"url": "http://other:8081"}, "models": [MODEL]})
    assert info.value.field == "registry.url"


def test_min_insync_replicas_above_the_replication_factor_is_refused() -> None:
    with pytest.raises(ConfigError, match="topics.min_insync_replicas"):
        load_settings(CONFIG, env={"RIVERBED_TOPICS__MIN_INSYNC_REPLICAS": "2"})
    settings = load_settings(CONFIG, env={"RIVERBED_TOPICS__REPLICATION_FACTOR": "3",
                                          "RIVERBED_TOPICS__MIN_INSYNC_REPLICAS": "2"})
    specs = {s.name: s for s in riverbed_topics(settings)}
    assert all(s.replication_factor == 3 and ("min.insync.replicas", "2") in s.configs
               for s in specs.values())
    t = settings.topics
    assert ("retention.ms", "-1") in specs[t.history].configs
    assert ("cleanup.policy", "compact") in specs[t.snapshots].configs


def test_index_keys_keep_one_entry_per_model_epoch_and_kind() -> None:
    for model in ("lr", "lr@p3", "a:b@c"):
        claimed = index_key(model, {"marker": "claimed", "epoch": 4})
        snapshot = index_key(model, {"snapshot_id": "s", "epoch": 4, "seq": 9})
        assert claimed != snapshot != index_key(model, {"snapshot_id": "t", "epoch": 5})
        assert snapshot == index_key(model, {"snapshot_id": "u", "epoch": 4, "seq": 99})
        assert index_key_model(claimed) == index_key_model(snapshot) == model
        assert index_key_model(model.encode()) == model  # entries written before
    assert index_key_model(b"\xff\xfe") is None


def test_topics_take_the_largest_batch_record_and_a_wider_batch_is_refused() -> None:
    from riverbed.streams.topics import batch_record_bytes, check_record_size

    settings = settings_from_dict({"models": [MODEL]}, env={})
    limit = str(settings.topics.max_record_bytes)
    sized = {spec.name: dict(spec.configs).get("max.message.bytes")
             for spec in riverbed_topics(settings)}
    t = settings.topics
    assert {sized[t.history], sized[t.pending], sized[t.training]} == {limit}
    assert sized[t.events] is None and sized[t.predictions] is None
    assert check_record_size(settings, [(200, 200, 2)]) is None  # 200 features fit
    assert batch_record_bytes(settings, [(200, 200, 2)]) > 200 * 11 * 2000  # base64 features
    # a history record of 2,000 x 600 x 8 bytes for certain: refused, naming the fix
    wide = dataclasses.replace(settings, limits=dataclasses.replace(
        settings.limits, max_features=1000))
    with pytest.raises(ConfigError) as refused:
        check_record_size(wide, [(600, 600, 2)])
    assert refused.value.field == "limits.max_batch_records"
    assert "lower limits.max_batch_records" in str(refused.value)
    # only the upper estimate above it (a map field, many classes): a warning
    warning = check_record_size(settings, [(9, 256, 64), (9, 256, 64)])
    assert warning is not None and "may make records of up to" in warning
    smaller = dataclasses.replace(settings, limits=dataclasses.replace(
        settings.limits, max_batch_records=500))
    assert check_record_size(smaller, [(9, 256, 64), (9, 256, 64)]) is None
    quiet = dataclasses.replace(
        wide, history=dataclasses.replace(settings.history, enabled=False),
        labels=dataclasses.replace(settings.labels, enabled=False))
    assert check_record_size(quiet, [(600, 600, 2)]) is None  # writes no batch records
