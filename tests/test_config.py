"""Settings: defaults, the documented TOML, environment overrides and readable errors."""

import tomllib

import pytest

from tuneloop.monitor.config import ConfigError, Settings, default_toml_path, load_settings


def test_default_toml_documents_exactly_the_code_defaults():
    documented = tomllib.loads(default_toml_path().read_text())
    assert Settings(**documented).model_dump() == Settings().model_dump()
    # every section and key of the model appears in the documented file
    for section, values in Settings().model_dump().items():
        assert set(values) == set(documented[section]), section


def test_defaults_bind_loopback():
    s = load_settings()
    assert s.server.host == "127.0.0.1" and s.dashboard.host == "127.0.0.1"


def test_file_then_env_override(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nport = 9000\n[paths]\ndata_dir = "%s"\n' % (tmp_path / "d"))
    assert load_settings(cfg).server.port == 9000
    monkeypatch.setenv("TUNELOOP_SERVER__PORT", "9100")
    s = load_settings(cfg)
    assert s.server.port == 9100
    assert s.db_path == (tmp_path / "d" / "tuneloop.duckdb").resolve()


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[server]\nport = "abc"\n', "config error: server.port: Input should be a valid integer"),
        ("[server]\nport = 70000\n", "config error: server.port: Input should be less than or equal to 65535"),
        ("[server]\nprot = 1\n", "config error: unknown key 'server.prot'"),
        ("[nope]\nx = 1\n", "config error: unknown key 'nope'"),
        ('[drift]\nwindow_kind = "weekly"\n', "config error: drift.window_kind: Input should be 'count' or 'time'"),
        ('[project]\nlabels = ["a"]\n', "config error: project.labels: Value error, needs at least two"),
        ('[retrain]\nray_address = "127.0.0.1:8265"\n', "config error: retrain.ray_address: Value error, must be "
         "the dashboard's http(s)://host:port address"),
        ('[retrain]\nlauncher = "slurm"\n', "config error: retrain.launcher: Input should be 'local' or 'ray'"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_values_give_one_clear_line(tmp_path, toml, expected):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "missing.toml")


def test_bad_env_value_names_the_key(monkeypatch):
    monkeypatch.setenv("TUNELOOP_MODEL__EPOCHS", "zero")
    with pytest.raises(ConfigError, match=r"model\.epochs"):
        load_settings()
